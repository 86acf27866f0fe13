"""antispam"""
