"""Pages: the outbound queue and the spam quarantine."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from . import ops_mail as om
from .context import OpError
from .i18n import _
from .web import Ctx, Pages, form_str, query_int, redirect


def routes(pages: Pages) -> list[Route]:
    pc = pages.pc

    # -------------------------------------------------------------- queue
    def _queue_filters(ctx: Ctx) -> dict[str, str]:
        q = ctx.request.query_params
        return {"sender": q.get("sender", "")[:320], "domain": q.get("domain", "")[:255], "state": q.get("state", "")[:20]}

    @pages.page()
    async def queue(ctx: Ctx) -> Response:
        p = ctx.principal
        if ctx.request.method == "POST":
            try:
                n, now = await om.flush_queue(pc, p, ctx.ip)
            except OpError as exc:
                return redirect(ctx, "/queue", str(exc), "error")
            msg = (_("{n} messages will be retried within a second") if now
                   else _("{n} messages will be retried when the MTA delivers again")).format(n=n)
            return redirect(ctx, "/queue", msg)
        f = _queue_filters(ctx)
        try:
            pg = await om.list_queue(pc, p, sender=f["sender"], rcpt_domain=f["domain"], state=f["state"],
                                     page=query_int(ctx.request, "page", 1) or 1)
        except OpError as exc:
            ctx.flash = ("error", str(exc))
            f["state"] = ""
            pg = await om.list_queue(pc, p, sender=f["sender"], rcpt_domain=f["domain"])
        can_flush = p.is_super or any(i.can_write for i in pg.items)
        return pages.render(ctx, "queue.html", pg=pg, f=f, states=om.QUEUE_STATES, can_flush=can_flush)

    @pages.page()
    async def queue_item(ctx: Ctx) -> Response:
        p = ctx.principal
        qid = ctx.request.path_params["id"]
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "retry":
                    now = await om.retry_queued(pc, p, ctx.ip, qid)
                    msg = (_("{id} will be retried within a second") if now
                           else _("{id} will be retried when the MTA delivers again")).format(id=qid)
                    return redirect(ctx, f"/queue/{qid}", msg)
                if action == "delete" and form_str(ctx, "confirm") == "yes":
                    done = await om.delete_queued(pc, p, ctx.ip, qid)
                    if done:
                        return redirect(ctx, "/queue", _("{id} deleted").format(id=qid))
                    return redirect(ctx, "/queue", _("{id} will be deleted when its delivery attempt in progress ends").format(id=qid))
            except OpError as exc:
                if exc.status == 404:
                    return redirect(ctx, "/queue", str(exc), "error")
                return redirect(ctx, f"/queue/{qid}", str(exc), "error")
            return redirect(ctx, f"/queue/{qid}")
        item = await om.queue_item(pc, p, qid)
        delivering = not pc.cfg.queue.hold and await pc.run(om.queue_view(pc).queue.worker_running)
        return pages.render(ctx, "queue_item.html", m=item, confirm=ctx.request.query_params.get("delete") == "1",
                            delivering=delivering)

    # --------------------------------------------------------- quarantine
    @pages.page()
    async def quarantine(ctx: Ctx) -> Response:
        q = ctx.request.query_params
        f = {"recipient": q.get("recipient", "")[:320], "sender": q.get("sender", "")[:320]}
        pg = await om.list_quarantine(pc, ctx.principal, recipient=f["recipient"], sender=f["sender"],
                                      page=query_int(ctx.request, "page", 1) or 1)
        return pages.render(ctx, "quarantine.html", pg=pg, f=f)

    @pages.page()
    async def held(ctx: Ctx) -> Response:
        p = ctx.principal
        qid = ctx.request.path_params["id"]
        if ctx.request.method == "POST":
            action = form_str(ctx, "action")
            try:
                if action == "release":
                    delivered, failed = await om.release_held(pc, p, ctx.ip, qid)
                    if not delivered:
                        why = "; ".join(f"{r}: {w}" for r, w in failed.items())
                        return redirect(ctx, f"/quarantine/{qid}", _("Not delivered: {reason}").format(reason=why), "error")
                    msg = _("Released to the Inbox of {recipients}.").format(recipients=", ".join(delivered))
                    if failed:
                        msg += " " + _("Not delivered: {reason}").format(reason="; ".join(f"{r}: {w}" for r, w in failed.items()))
                    return redirect(ctx, "/quarantine", msg)
                if action == "delete" and form_str(ctx, "confirm") == "yes":
                    await om.delete_held(pc, p, ctx.ip, qid)
                    return redirect(ctx, "/quarantine", _("Message {id} deleted.").format(id=qid))
            except OpError as exc:
                if exc.status == 404:
                    return redirect(ctx, "/quarantine", str(exc), "error")
                return redirect(ctx, f"/quarantine/{qid}", str(exc), "error")
            return redirect(ctx, f"/quarantine/{qid}")
        item = await om.held_item(pc, p, qid)
        return pages.render(ctx, "held.html", m=item, confirm=ctx.request.query_params.get("delete") == "1")

    return [
        Route("/queue", queue, methods=["GET", "POST"]),
        Route("/queue/{id}", queue_item, methods=["GET", "POST"]),
        Route("/quarantine", quarantine),
        Route("/quarantine/{id}", held, methods=["GET", "POST"]),
    ]
