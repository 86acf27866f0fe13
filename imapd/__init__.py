"""imapd"""
