"""Simplified Chinese for the outbound side: DSNs, `appliance queue` and `appliance dkim`."""

from appliance.i18n import add_translations

MESSAGES = {
    # mta/dsn.py, mta/outbound.py
    "Mail Delivery System": "邮件投递系统",
    "Undelivered Mail Returned to Sender": "邮件无法投递，已退回发件人",
    "Delayed Mail (still being retried)": "邮件投递延迟（仍在重试）",
    "This is the mail system at {hostname}.": "这是来自 {hostname} 的邮件系统通知。",
    "Your message could not be delivered to the recipients below. This is a permanent error; the message is attached.":
        "您的邮件无法投递给以下收件人。这是永久性错误；原邮件附在后面。",
    "Your message could not be delivered yet to the recipients below. It stays in the queue and delivery will be tried "
    "again until {until}; you do not need to send it again.":
        "您的邮件暂时还未能投递给以下收件人。邮件仍在队列中，系统会持续重试直到 {until}；您无需重新发送。",
    "not sent: sending from {email} is suspended": "未发送：{email} 的发信功能已被暂停",
    "delivery time expired after {days} days; last error: {error}": "投递已超时（{days} 天）；最后一次错误：{error}",
    "account frozen": "账号发信已冻结",
    "no queued message {id}": "队列中没有邮件 {id}",
    "invalid queue id {id}": "无效的队列编号 {id}",
    # appliance queue
    "the outbound mail queue": "发送邮件队列",
    "queued messages: sender, recipients with their state, attempts, next try, last error":
        "队列中的邮件：发件人、各收件人状态、尝试次数、下次尝试时间、最后一次错误",
    "one queued message in detail (envelope, headers, each recipient)": "队列中某封邮件的详情（信封、邮件头、各收件人）",
    "try to deliver a message now": "立即尝试投递一封邮件",
    "drop a message from the queue without delivering or bouncing it": "从队列中删除一封邮件，不投递也不退信",
    "try to deliver every queued message now": "立即尝试投递队列中的所有邮件",
    "the outbound queue is empty": "发送队列为空",
    "id": "编号",
    "sender": "发件人",
    "recipients": "收件人",
    "attempts": "尝试次数",
    "next try": "下次尝试",
    "last error": "最后一次错误",
    "pending": "待投递",
    "sent": "已发送",
    "failed": "失败",
    "deferred": "推迟",
    "now": "现在",
    "when the MTA runs": "MTA 运行后",
    "held: {why}": "暂缓：{why}",
    "queue.hold is set: nothing is delivered": "已设置 queue.hold：不会投递任何邮件",
    "no MTA is running: nothing is delivered until `appliance up` runs": "MTA 未运行：在运行 `appliance up` 之前不会投递任何邮件",
    "id: {id}": "编号：{id}",
    "sender: {sender}": "发件人：{sender}",
    "queued: {when}, size {size}": "入队时间：{when}，大小 {size}",
    "attempts: {n}, last {last}, next try {next}": "尝试次数：{n}，上次 {last}，下次尝试 {next}",
    "{id}: cannot be read: {error}": "{id}：无法读取：{error}",
    "last error: {error}": "最后一次错误：{error}",
    "submitted by: {user}": "提交者：{user}",
    "recipients:": "收件人：",
    "{id} will be retried within a second": "{id} 将在一秒内重试",
    "{id} will be retried when the MTA delivers again": "{id} 将在 MTA 恢复投递时重试",
    "{n} messages will be retried within a second": "{n} 封邮件将在一秒内重试",
    "{n} messages will be retried when the MTA delivers again": "{n} 封邮件将在 MTA 恢复投递时重试",
    "{id} deleted": "{id} 已删除",
    "{id} will be deleted when its delivery attempt in progress ends": "{id} 将在当前投递尝试结束后删除",
    # appliance dkim
    "DKIM keys of a domain: show them, rotate them": "域名的 DKIM 密钥：查看、轮换",
    "the domain's DKIM keys, which one signs, and their DNS records": "域名的 DKIM 密钥、当前用于签名的密钥及其 DNS 记录",
    "also look the records up in DNS": "同时在 DNS 中查询这些记录",
    "replace the domain's DKIM keys, one step per run (new keys, switch, --finish)":
        "更换域名的 DKIM 密钥，每次运行完成一步（生成新密钥、切换、--finish）",
    "retire the previous keys (after dkim.keep_old)": "停用旧密钥（在 dkim.keep_old 之后）",
    "switch without seeing the records in DNS, or finish before dkim.keep_old": "不检查 DNS 记录直接切换，或在 dkim.keep_old 之前结束轮换",
    "signing": "正在签名",
    "new, waiting for its DNS record": "新密钥，等待发布 DNS 记录",
    "retiring, keep it published": "即将停用，请保留其 DNS 记录",
    "not used": "未使用",
    "selector {selector} ({algorithm}): {state}": "选择器 {selector}（{algorithm}）：{state}",
    "[in DNS]": "[已在 DNS 中]",
    "[NOT in DNS]": "[不在 DNS 中]",
    "[DNS lookup failed]": "[DNS 查询失败]",
    "{domain} has no DKIM key: mail from it is not signed; create one with `appliance dkim rotate {domain}`":
        "{domain} 没有 DKIM 密钥：来自该域名的邮件不会签名；可用 `appliance dkim rotate {domain}` 创建",
    "rotation in progress: keep the {old} records published until {date}, then run `appliance dkim rotate {domain} --finish`":
        "轮换进行中：请保留 {old} 的记录直到 {date}，然后运行 `appliance dkim rotate {domain} --finish`",
    "{domain} is not a domain of this appliance": "{domain} 不是本设备的域名",
    "{domain} has no previous DKIM key to retire": "{domain} 没有需要停用的旧 DKIM 密钥",
    "mail signed with {old} may still be in transit: keep its records published until {date} (dkim.keep_old), or use --force":
        "用 {old} 签名的邮件可能仍在传输中：请保留其记录直到 {date}（dkim.keep_old），或使用 --force",
    "{old} retired; these DNS records may be removed now:": "{old} 已停用；现在可以删除以下 DNS 记录：",
    "the new DKIM records are not in DNS yet (publish them, or use --force): {records}":
        "新的 DKIM 记录尚未出现在 DNS 中（请先发布，或使用 --force）：{records}",
    "{domain} is now signed with {new}.": "{domain} 现在使用 {new} 签名。",
    "Keep the {old} records published until {date}, then run `appliance dkim rotate {domain} --finish`.":
        "请保留 {old} 的记录直到 {date}，然后运行 `appliance dkim rotate {domain} --finish`。",
    "finish the rotation in progress first: appliance dkim rotate {domain} --finish":
        "请先完成正在进行的轮换：appliance dkim rotate {domain} --finish",
    "New DKIM keys {new} for {domain}. Publish these DNS records:": "已为 {domain} 生成新的 DKIM 密钥 {new}。请发布以下 DNS 记录：",
    "Mail is still signed with {old} (keep its records published). Once the new records are visible, run "
    "`appliance dkim rotate {domain}` again to switch.":
        "邮件仍使用 {old} 签名（请保留其记录）。新记录生效后，再次运行 `appliance dkim rotate {domain}` 完成切换。",
    "Mail from {domain} is not signed until then: once the records are visible, run `appliance dkim rotate {domain}` again.":
        "在此之前来自 {domain} 的邮件不会签名：记录生效后，请再次运行 `appliance dkim rotate {domain}`。",
}

add_translations("zh-CN", MESSAGES)
