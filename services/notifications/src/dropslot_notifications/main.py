"""DropSlot notifications service: the app factory (`uvicorn dropslot_notifications.main:create_app --factory`).

Events become PENDING notification rows inside the consumer's unit of work (the inbox makes a
redelivered event harmless); the supervised sender loop renders and delivers them over email
(SMTP), SMS and push (signed-HTTP providers). See `config.py` for the transports and the dev
SMTP catcher, `api.py` for the routes, `rendering.py` for the templates.
"""

from __future__ import annotations

import logging

from dropslot_kit.app import ServiceRuntime, create_service_app
from fastapi import FastAPI

from .adapters.catcher import Mailbox, SmtpCatcher
from .adapters.channels import SignedHttpTransport, SmtpTransport, Transport
from .api import router
from .config import Settings
from .consumers import build_consumers
from .domain.model import Channel, Planner
from .rendering import Renderer
from .service.handlers import HandlerDeps
from .service.sender import Sender

log = logging.getLogger("dropslot.notifications")


def build_transports(settings: Settings, catcher: SmtpCatcher | None) -> dict[Channel, Transport]:
    if catcher is not None:
        target = catcher.address
    else:
        host, port = settings.notifications_smtp_host or "127.0.0.1", settings.notifications_smtp_port

        def target() -> tuple[str, int]:
            return host, port

    password = settings.notifications_smtp_password
    transports: dict[Channel, Transport] = {
        Channel.EMAIL: SmtpTransport(
            target=target, sender=settings.notifications_smtp_from,
            username=settings.notifications_smtp_username,
            password=password.get_secret_value() if password else None,
            # The catcher speaks plain SMTP on loopback; never try TLS with it.
            start_tls=False if catcher is not None else settings.notifications_smtp_starttls,
            use_tls=False if catcher is not None else settings.notifications_smtp_use_tls,
            validate_certs=settings.notifications_smtp_validate_certs,
            timeout=settings.notifications_smtp_timeout_seconds,
            # As many kept-open connections as the sender has sends in flight.
            pool_size=settings.notifications_send_concurrency,
            idle_seconds=settings.notifications_smtp_idle_seconds,
        )
    }
    for channel, url, secret in (
        (Channel.SMS, settings.notifications_sms_url, settings.notifications_sms_secret),
        (Channel.PUSH, settings.notifications_push_url, settings.notifications_push_secret),
    ):
        if url:
            if secret is None:
                log.warning("%s provider has no secret configured: its signatures prove nothing", channel)
            transports[channel] = SignedHttpTransport(
                channel, url=url, secret=secret.get_secret_value() if secret else "",
                timeout=settings.notifications_http_timeout_seconds,
            )
    return transports


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    renderer = Renderer(settings.notifications_templates_dir)
    mailbox = catcher = None
    if settings.smtp_catcher_enabled:
        mailbox = Mailbox(settings.notifications_mailbox_dir, settings.notifications_mailbox_keep)
        catcher = SmtpCatcher(mailbox, port=settings.notifications_smtp_catcher_port)
    transports = build_transports(settings, catcher)
    deps = HandlerDeps(
        base_url=settings.public_base_url,
        verify_path=settings.notifications_verify_email_path,
        reset_path=settings.notifications_reset_password_path,
        planner=Planner(frozenset(transports)),
    )

    async def on_startup(rt: ServiceRuntime) -> None:
        if catcher is not None:
            await catcher.start()
            rt.extras["mailbox"] = mailbox
        assert rt.db is not None
        rt.extras["sender"] = Sender(settings, rt.db, renderer, transports)

    async def on_shutdown(rt: ServiceRuntime) -> None:
        for transport in transports.values():
            await transport.close()
        if catcher is not None:
            await catcher.stop()

    async def run_sender(rt: ServiceRuntime) -> None:
        await rt.extras["sender"].run()

    app = create_service_app(
        settings, title="DropSlot notifications", routers=[router], consumers=build_consumers(deps),
        background=[("sender", run_sender)], on_startup=on_startup, on_shutdown=on_shutdown,
    )
    app.state.notification_channels = frozenset(transports)
    return app
