"""`report --mail-to`: the digest as one mail (plain text and HTML, the PNG attached), sent through
the relay the shipped alertmanager.yml uses, set by the same variables (SMTP_SMARTHOST, SMTP_FROM,
SMTP_AUTH_USERNAME, SMTP_AUTH_PASSWORD, SMTP_REQUIRE_TLS), so one mail setup serves both.

smtplib and email.message from the standard library do the protocol and the MIME structure.
SMTP_REQUIRE_TLS defaults to true, as in Alertmanager: STARTTLS with certificate checks, refused if
the relay does not offer it; port 465 is TLS from the first byte.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from otel_tokens.ops.report.html import to_html
from otel_tokens.ops.report.model import CONNECTION_ERROR, USAGE_ERROR, Report, ReportError
from otel_tokens.ops.report.render import headline, to_markdown

TIMEOUT = 30.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str
    username: str
    password: str
    require_tls: bool

    @property
    def smarthost(self) -> str:
        return f"{self.host}:{self.port}"


def _address(text: str, where: str) -> str:
    """One plain address (user@host): no display name, no whitespace, nothing a header could fold on."""
    _, address = parseaddr(text)
    if (not address or address != text.strip() or "@" not in address or address.startswith("@")
            or address.endswith("@") or any(c.isspace() or ord(c) < 32 for c in address)):
        raise ReportError(f"bad {where} {text!r}: use one address like ops@example.com", USAGE_ERROR)
    return address


def recipients(values: Sequence[str]) -> list[str]:
    """--mail-to, repeated or comma-separated."""
    return [_address(part.strip(), "--mail-to") for value in values for part in value.split(",") if part.strip()]


def smtp_settings(env: Mapping[str, str] | None = None) -> SmtpSettings:
    env = os.environ if env is None else env
    smarthost = env.get("SMTP_SMARTHOST", "").strip()
    if not smarthost:
        raise ReportError("--mail-to needs SMTP_SMARTHOST (host:port of the mail relay, the variable "
                          "alertmanager.yml uses) and SMTP_FROM", USAGE_ERROR)
    host, _, port_text = smarthost.rpartition(":")
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ReportError(f"bad SMTP_SMARTHOST {smarthost!r}: use host:port, e.g. smtp.example.com:587", USAGE_ERROR)
    sender = env.get("SMTP_FROM", "")
    if not sender.strip():
        raise ReportError("--mail-to needs SMTP_FROM (the sender address, the variable alertmanager.yml uses)",
                          USAGE_ERROR)
    tls = env.get("SMTP_REQUIRE_TLS", "true").strip().lower()
    if tls not in ("true", "false"):
        raise ReportError(f"bad SMTP_REQUIRE_TLS {env.get('SMTP_REQUIRE_TLS')!r}: use true or false", USAGE_ERROR)
    return SmtpSettings(host, int(port_text), _address(sender, "SMTP_FROM"), env.get("SMTP_AUTH_USERNAME", ""),
                        env.get("SMTP_AUTH_PASSWORD", ""), tls == "true")


def subject(report: Report) -> str:
    # a name with a newline must not end the header: collapse all whitespace
    return " ".join(f"LLM usage: {headline(report)}".split())[:250]


def build_message(report: Report, to: Sequence[str], sender: str, png: bytes | None) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject(report)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(report.at, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(to_markdown(report))
    message.add_alternative(to_html(report, chart=png is not None), subtype="html")
    if png is not None:
        message.add_attachment(png, maintype="image", subtype="png", filename="llm-usage.png")
    return message


def send(message: EmailMessage, settings: SmtpSettings, to: Sequence[str]) -> None:
    """Deliver through the relay; every failure is one ReportError naming the relay."""
    where = f"mail via {settings.smarthost}"
    try:
        context = ssl.create_default_context()
        if settings.port == 465:
            client: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=TIMEOUT, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=TIMEOUT)
        with client:
            client.ehlo()
            if settings.require_tls and settings.port != 465:
                if not client.has_extn("starttls"):
                    raise ReportError(f"{where}: the relay does not offer STARTTLS and SMTP_REQUIRE_TLS is true "
                                      "(set SMTP_REQUIRE_TLS=false only for a relay on a trusted network)",
                                      CONNECTION_ERROR)
                client.starttls(context=context)
                client.ehlo()
            if settings.username:
                client.login(settings.username, settings.password)
            refused = client.send_message(message, from_addr=settings.sender, to_addrs=list(to))
    except ReportError:
        raise
    except smtplib.SMTPAuthenticationError as error:
        raise ReportError(f"{where}: authentication as {settings.username!r} refused ({error.smtp_code})",
                          CONNECTION_ERROR) from None
    except (smtplib.SMTPException, OSError) as error:
        raise ReportError(f"{where} failed: {type(error).__name__}: {error}", CONNECTION_ERROR) from None
    if refused:
        raise ReportError(f"{where}: refused for {', '.join(sorted(refused))}", CONNECTION_ERROR)
