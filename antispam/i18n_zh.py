"""Simplified Chinese for the messages of the antispam package and its CLI."""

from appliance.i18n import add_translations

add_translations(
    "zh-CN",
    {
        # verdict reasons (logs)
        "sender on the recipients' allow lists": "发件人在收件人的白名单中",
        "spam filter unavailable": "垃圾邮件过滤不可用",
        "message too large to scan": "邮件过大，未扫描",
        "sender on the recipients' block lists": "发件人在收件人的黑名单中",
        "spam filter unavailable: {error}": "垃圾邮件过滤不可用：{error}",
        "sender {entry} on the allow list of {rcpt}": "发件人 {entry} 在 {rcpt} 的白名单中",
        "sender {entry} on the block list of {rcpt}": "发件人 {entry} 在 {rcpt} 的黑名单中",
        "rspamd: {action}": "rspamd：{action}",
        "virus found: {name}": "发现病毒：{name}",
        "score {score:.2f}, junk from {junk:g}, reject from {reject:g}": "得分 {score:.2f}，{junk:g} 分起归入垃圾邮件，{reject:g} 分起拒收",
        # outbound freezes
        "sent {n} messages in the last hour (limit {limit})": "过去一小时发送了 {n} 封邮件（上限 {limit}）",
        "sent to {n} different recipients in the last hour (limit {limit})": "过去一小时发给了 {n} 个不同的收件人（上限 {limit}）",
        "{n} failed recipients or bounces in the last hour (limit {limit})": "过去一小时有 {n} 个收件人投递失败或退信（上限 {limit}）",
        "sent {n} messages in the last hour, more than {factor} times the usual {usual:.1f} per hour":
            "过去一小时发送了 {n} 封邮件，超过平时每小时 {usual:.1f} 封的 {factor} 倍",
        "Sending frozen for {email}": "已冻结 {email} 的发信",
        "Sending from the account {email} was frozen at {when} because of unusual activity:\n"
        "{reason}.\n\n"
        "This often means the account's password or an app password was stolen and is used to send spam. "
        "Mail the account tries to send is refused with a temporary error until the freeze is lifted.\n\n"
        "What to do: check the account's recent logins (appliance events, or the panel), change its password "
        "and revoke its app passwords, then lift the freeze:\n"
        "    appliance user unfreeze {email}\n":
            "由于异常活动，账号 {email} 的发信已于 {when} 被冻结：\n"
            "{reason}。\n\n"
            "这通常意味着该账号的密码或某个客户端授权码已被盗用，正被用来发送垃圾邮件。"
            "在解除冻结之前，该账号发出的邮件都会被临时拒绝。\n\n"
            "处理方法：查看该账号最近的登录记录（appliance events 或管理面板），修改其密码并吊销其客户端授权码，"
            "然后解除冻结：\n"
            "    appliance user unfreeze {email}\n",
        # lists and thresholds
        "{entry!r} is neither an address nor a domain": "{entry!r} 既不是邮件地址也不是域名",
        "a list holds at most {n} entries": "名单最多 {n} 项",
        "a score must be between -1000 and 1000": "分数必须在 -1000 到 1000 之间",
        "the junk score ({junk:g}) must be below the reject score ({reject:g})": "垃圾邮件分数（{junk:g}）必须小于拒收分数（{reject:g}）",
        "days must be between 0 and 365": "天数必须在 0 到 365 之间",
        # service and status
        "not installed: {packages} (apt install {packages})": "未安装：{packages}（apt install {packages}）",
        "antispam.enabled = false": "antispam.enabled = false",
        "not installed: {packages} (apt install {packages}); mail is accepted unchecked":
            "未安装：{packages}（apt install {packages}）；邮件不经扫描直接接收",
        "rspamd answers at {url}": "rspamd 在 {url} 有响应",
        "rspamd does not answer at {url}; mail follows antispam.on_failure = {policy}":
            "rspamd 在 {url} 没有响应；邮件按 antispam.on_failure = {policy} 处理",
        "antispam: {state} ({detail})": "反垃圾邮件：{state}（{detail}）",
        "off": "已关闭",
        "unavailable": "不可用",
        "conflict": "端口冲突",
        "virus scanning off: clamd is not installed (apt install clamav-daemon)": "病毒扫描未启用：未安装 clamd（apt install clamav-daemon）",
        "virus scanning on (clamd answers)": "病毒扫描已启用（clamd 有响应）",
        "virus scanning unavailable: clamd does not answer (loading its signatures, or none in {path})":
            "病毒扫描不可用：clamd 没有响应（正在加载病毒库，或 {path} 中没有病毒库）",
        "{program} (pid {pid})": "{program}（pid {pid}）",
        "another program": "另一个程序",
        "port {port} ({key}) is held by {who}, which the appliance did not start":
            "端口 {port}（{key}）被 {who} 占用，它不是本系统启动的",
        "the appliance runs its own {program}: systemctl disable --now {unit} && systemctl mask {unit}, "
        "then systemctl restart appliance-antispam":
            "本系统自带 {program}：请执行 systemctl disable --now {unit} && systemctl mask {unit}，"
            "然后执行 systemctl restart appliance-antispam",
        "stop that program, or choose another port for {key} in appliance.toml":
            "请停止该程序，或在 appliance.toml 中为 {key} 另选端口",
        "no such quarantined message: {id}": "隔离区中没有这封邮件：{id}",
        # CLI
        "spam filter: allow and block lists, thresholds, statistics": "垃圾邮件过滤：白名单、黑名单、阈值、统计",
        "always accept mail from ADDRESS_OR_DOMAIN for EMAIL": "始终为 EMAIL 接收来自 ADDRESS_OR_DOMAIN 的邮件",
        "treat mail from ADDRESS_OR_DOMAIN as spam for EMAIL": "把来自 ADDRESS_OR_DOMAIN 的发给 EMAIL 的邮件视为垃圾邮件",
        "remove ADDRESS_OR_DOMAIN from EMAIL's allow list": "从 EMAIL 的白名单中删除 ADDRESS_OR_DOMAIN",
        "remove ADDRESS_OR_DOMAIN from EMAIL's block list": "从 EMAIL 的黑名单中删除 ADDRESS_OR_DOMAIN",
        "show EMAIL's allow and block lists": "显示 EMAIL 的白名单和黑名单",
        "show or set a domain's junk and reject scores": "显示或设置域名的垃圾邮件分数和拒收分数",
        "score from which mail goes to Junk": "达到此分数的邮件放入垃圾邮件文件夹",
        "score from which mail is rejected": "达到此分数的邮件被拒收",
        "go back to the defaults of appliance.toml": "恢复 appliance.toml 中的默认值",
        "rspamd's counters (scanned, learned, actions)": "rspamd 的计数（已扫描、已学习、处理动作）",
        "accounts whose sending is frozen": "发信被冻结的账号",
        "rejected spam kept for review": "被拒收并留待审查的垃圾邮件（隔离区）",
        "list quarantined messages": "列出隔离区中的邮件",
        "show a quarantined message": "显示隔离区中的一封邮件",
        "print the whole message": "输出整封邮件",
        "deliver a quarantined message to its recipients": "把隔离区中的邮件投递给原收件人",
        "delete a quarantined message": "删除隔离区中的一封邮件",
        "keep rejected spam for DOMAIN this many days (0: none)": "被拒收的 DOMAIN 垃圾邮件保留的天数（0：不保留）",
        "delete expired quarantined messages now": "立即删除隔离区中已过期的邮件",
        "let a user send again after an abuse freeze": "解除因滥用而冻结的用户发信",
        "{entry} added to the allow list of {email}": "{entry} 已加入 {email} 的白名单",
        "{entry} added to the block list of {email}": "{entry} 已加入 {email} 的黑名单",
        "{entry} removed from the allow list of {email}": "{entry} 已从 {email} 的白名单中删除",
        "{entry} removed from the block list of {email}": "{entry} 已从 {email} 的黑名单中删除",
        "{entry} is already on the allow list of {email}": "{entry} 已在 {email} 的白名单中",
        "{entry} is already on the block list of {email}": "{entry} 已在 {email} 的黑名单中",
        "{entry} is not on the allow list of {email}": "{entry} 不在 {email} 的白名单中",
        "{entry} is not on the block list of {email}": "{entry} 不在 {email} 的黑名单中",
        "list": "名单",
        "address or domain": "地址或域名",
        "allow": "白名单",
        "block": "黑名单",
        "{domain}: junk from {junk:g}, reject from {reject:g}": "{domain}：{junk:g} 分起归入垃圾邮件，{reject:g} 分起拒收",
        "(defaults)": "（默认值）",
        "rspamd does not answer: {error}": "rspamd 没有响应：{error}",
        "scanned {scanned}, learned {learned}, spam {spam}, ham {ham}": "已扫描 {scanned}，已学习 {learned}，垃圾邮件 {spam}，正常邮件 {ham}",
        "action": "动作",
        "messages": "邮件数",
        "account": "账号",
        "frozen since": "冻结时间",
        "reason": "原因",
        "id": "编号",
        "held": "隔离时间",
        "expires": "过期时间",
        "sender": "发件人",
        "recipients": "收件人",
        "score": "得分",
        "subject": "主题",
        "size": "大小",
        "client": "客户端",
        "released {id} to {recipients}": "已将 {id} 投递给 {recipients}",
        "not delivered to {rcpt}: {reason}": "未投递给 {rcpt}：{reason}",
        "deleted {id}": "已删除 {id}",
        "rejected spam for {domain} is kept {days} days": "{domain} 被拒收的垃圾邮件将保留 {days} 天",
        "rejected spam for {domain} is not kept": "{domain} 被拒收的垃圾邮件不再保留",
        "{n} expired messages deleted": "已删除 {n} 封过期邮件",
        "{email} may send again": "{email} 已可以重新发信",
        "{email} was not frozen": "{email} 未被冻结",
    },
)
