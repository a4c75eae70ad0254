/* dispatcher: a client connection, its exchange and upstream as one line of text, for debug
 * log lines ("state=PROXY flags=READABLE|WRITABLE tflags=REQ_DONE|UP_WRITTEN ..."). Kept apart
 * from the data path: nothing here runs unless debug logging is on. */
#include "worker/wk_internal.h"

#include <stdio.h>
#include <string.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/str.h"

struct flag_name {
    uint32_t bit;
    const char *name;
};

static const char *const client_states[] = {
    [WK_CS_IDLE] = "IDLE",   [WK_CS_HEAD] = "HEAD",     [WK_CS_PROXY] = "PROXY",
    [WK_CS_REPLY] = "REPLY", [WK_CS_LINGER] = "LINGER", [WK_CS_PPHDR] = "PPHDR",
    [WK_CS_TLS] = "TLS",     [WK_CS_H2] = "H2",
};

static const struct flag_name client_flags[] = {
    {WK_C_F_READABLE, "READABLE"}, {WK_C_F_WRITABLE, "WRITABLE"},
    {WK_C_F_EOF, "EOF"},           {WK_C_F_CLOSE, "CLOSE"},
    {WK_C_F_HUP, "HUP"},           {WK_C_F_STARTED, "STARTED"},
    {WK_C_F_RDHUP, "RDHUP"},       {0, NULL},
};

static const struct flag_name txn_flags[] = {
    {WK_T_REQ_DONE, "REQ_DONE"},
    {WK_T_HEAD_REQ, "HEAD_REQ"},
    {WK_T_UP_WRITTEN, "UP_WRITTEN"},
    {WK_T_RESP_BYTES, "RESP_BYTES"},
    {WK_T_RESP_HEAD, "RESP_HEAD"},
    {WK_T_RESP_DONE, "RESP_DONE"},
    {WK_T_CLIENT_SENT, "CLIENT_SENT"},
    {WK_T_DECHUNK, "DECHUNK"},
    {WK_T_BODY_LOST, "BODY_LOST"},
    {WK_T_UP_REUSABLE, "UP_REUSABLE"},
    {WK_T_CONTINUE, "CONTINUE"},
    {WK_T_IDEMPOTENT, "IDEMPOTENT"},
    {WK_T_COUNTED, "COUNTED"},
    {WK_T_RESP_WAIT, "RESP_WAIT"},
    {WK_T_EARLY, "EARLY"},
    {WK_T_REPLIED, "REPLIED"},
    {WK_T_UPGRADE, "UPGRADE"},
    {WK_T_TUNNEL, "TUNNEL"},
    {WK_T_UP_EOF, "UP_EOF"},
    {WK_T_LB_DONE, "LB_DONE"},
    {WK_T_TALLIED, "TALLIED"},
    {WK_T_BODY_STALL, "BODY_STALL"},
    {WK_T_SEND_WAIT, "SEND_WAIT"},
    {WK_T_RATE_TICK, "RATE_TICK"},
    {WK_T_LOGGED, "LOGGED"},
    {0, NULL},
};

static const struct flag_name upstream_flags[] = {
    {WK_UP_F_READABLE, "READABLE"},
    {WK_UP_F_WRITABLE, "WRITABLE"},
    {WK_UP_F_CONNECTING, "CONNECTING"},
    {WK_UP_F_HUP, "HUP"},
    {WK_UP_F_REUSED, "REUSED"},
    {WK_UP_F_TLSHS, "TLSHS"},
    {WK_UP_F_WERR, "WERR"},
    {0, NULL},
};

/* "A|B|C" for the bits of <v> named in <names>, "0x..." for the others, "-" for none. */
static void add_flags(struct str_buf *sb, uint32_t v, const struct flag_name *names)
{
    int first = 1;

    for (const struct flag_name *f = names; f->name != NULL; f++) {
        if (v & f->bit) {
            str_addf(sb, "%s%s", first ? "" : "|", f->name);
            v &= ~f->bit;
            first = 0;
        }
    }
    if (v != 0) {
        str_addf(sb, "%s0x%x", first ? "" : "|", v);
        first = 0;
    }
    if (first) {
        str_adds(sb, "-");
    }
}

const char *wk_client_state_name(unsigned state)
{
    if (state < DSP_ARRAY_SIZE(client_states) && client_states[state] != NULL) {
        return client_states[state];
    }
    return "?";
}

size_t wk_client_describe(const struct wk_client *c, char *buf, size_t len)
{
    const struct wk_xchg *x = &c->x;
    struct str_buf sb;
    char ip[64];

    if (len < 8) {
        return 0;
    }
    str_init(&sb, buf, len - 1);
    wk_ip_str(c->peer.family, c->peer.ip, ip, sizeof(ip));
    str_addf(&sb, "client %s:%u fd=%d %s state=%s flags=", ip, c->peer.port, c->xp.fd,
             c->xp.type->name, wk_client_state_name(c->state));
    add_flags(&sb, c->flags, client_flags);
    str_addf(&sb, " in=%u/%u out=%u/%u", c->in.end - c->in.start, c->in.cap,
             c->out.end - c->out.start, c->out.cap);
    if (x->at.gen != NULL) {
        str_addf(&sb, " tflags=");
        add_flags(&sb, x->tflags, txn_flags);
        str_addf(&sb, " status=%u service=", x->status);
        if (x->at.service == SHM_NONE) {
            str_adds(&sb, "-");
        } else {
            str_addf(&sb, "%u backend=%u tries=%u", x->at.service, x->at.backend, x->at.tries);
        }
        str_addf(&sb, " sent=%u/%u", x->send_off, x->parsed_off);
    }
    if (x->up != NULL) {
        str_addf(&sb, " up=[fd=%d %s flags=", x->up->xp.fd, x->up->xp.type->name);
        add_flags(&sb, x->up->flags, upstream_flags);
        str_adds(&sb, "]");
    }
    if (sb.overflow) {
        memcpy(buf + len - 4, "...", 4);
        return len - 1;
    }
    buf[sb.len] = '\0';
    return sb.len;
}

/* A debug line for connection <c>: <what> happened, and the state it was in. */
void wk_client_debug(const struct wk_client *c, const char *what)
{
    if (log_level >= LOG_DEBUG) {
        char desc[512];
        wk_client_describe(c, desc, sizeof(desc));
        log_debug("%s: %s", what, desc);
    }
}
