/* dispatcher: strict incremental chunked-body decoder (see wk_chunk.h). */
#include "worker/wk_chunk.h"

enum {
    S_SIZE0,       /* first hex digit of a chunk size */
    S_SIZE,        /* more hex digits, or what ends the size */
    S_SIZE_WS,     /* BWS after the size: only ";" may follow */
    S_EXT_NAME0,   /* after ";": BWS, then the first name character */
    S_EXT_NAME,    /* in an extension name */
    S_EXT_NAME_WS, /* BWS after a name: "=" or ";" */
    S_EXT_VAL0,    /* after "=": BWS, then a token or a quoted-string */
    S_EXT_TOKEN,   /* in a token value */
    S_EXT_QS,      /* in a quoted-string */
    S_EXT_QP,      /* after a backslash in a quoted-string */
    S_EXT_VAL_END, /* right after a value: ";", BWS or CR */
    S_EXT_VAL_WS,  /* BWS after a value: only ";" may follow */
    S_LINE_LF,     /* CR of a size line seen */
    S_DATA,        /* chunk data */
    S_DATA_CR,     /* the CR after chunk data */
    S_DATA_LF,     /* the LF after chunk data */
    S_TR0,         /* start of a trailer line, or the final CRLF */
    S_TR_NAME,     /* in a trailer field name */
    S_TR_VALUE,    /* in a trailer field value */
    S_TR_LF,       /* CR of a trailer line seen */
    S_FINAL_LF,    /* CR of the final CRLF seen */
    S_DONE,
    S_ERROR,
};

/* RFC 9110 tchar. */
static int tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        return 1;
    }
    /* clang-format off */
    switch (ch) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
    /* clang-format on */
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

void wk_chunk_init(struct wk_chunk *ch, uint32_t trailer_max)
{
    ch->left = 0;
    ch->total = 0;
    ch->line = 0;
    ch->pend = 0;
    ch->trailer_max = trailer_max ? trailer_max : WK_CHUNK_LINE_MAX;
    ch->state = S_SIZE0;
    ch->digits = 0;
    ch->err = NULL;
}

static int fail(struct wk_chunk *ch, const char *why, size_t at, size_t *used)
{
    ch->state = S_ERROR;
    ch->err = why;
    *used = at;
    return WK_CHUNK_ERROR;
}

/* One byte of a chunk extension (or the whitespace after the size). NULL, or why it is invalid. */
static const char *ext_byte(struct wk_chunk *ch, unsigned char b)
{
    switch (ch->state) {
    case S_SIZE_WS:
    case S_EXT_VAL_WS:
        if (b == ';') {
            ch->state = S_EXT_NAME0;
        } else if (b != ' ' && b != '\t') {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_NAME0:
        if (tchar(b)) {
            ch->state = S_EXT_NAME;
        } else if (b != ' ' && b != '\t') {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_NAME:
        if (tchar(b)) {
            break;
        }
        if (b == '=') {
            ch->state = S_EXT_VAL0;
        } else if (b == ';') {
            ch->state = S_EXT_NAME0;
        } else if (b == '\r') {
            ch->state = S_LINE_LF;
        } else if (b == ' ' || b == '\t') {
            ch->state = S_EXT_NAME_WS;
        } else {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_NAME_WS:
        if (b == '=') {
            ch->state = S_EXT_VAL0;
        } else if (b == ';') {
            ch->state = S_EXT_NAME0;
        } else if (b != ' ' && b != '\t') {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_VAL0:
        if (b == '"') {
            ch->state = S_EXT_QS;
        } else if (tchar(b)) {
            ch->state = S_EXT_TOKEN;
        } else if (b != ' ' && b != '\t') {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_TOKEN:
        if (tchar(b)) {
            break;
        }
        /* fall through */
    case S_EXT_VAL_END: /* (and a token's end): what may follow a value */
        if (b == ';') {
            ch->state = S_EXT_NAME0;
        } else if (b == '\r') {
            ch->state = S_LINE_LF;
        } else if (b == ' ' || b == '\t') {
            ch->state = S_EXT_VAL_WS;
        } else {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_QS:
        /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
        if (b == '"') {
            ch->state = S_EXT_VAL_END;
        } else if (b == '\\') {
            ch->state = S_EXT_QP;
        } else if (!(b == '\t' || (b >= 0x20 && b != 0x7f))) {
            return "Invalid chunk extension";
        }
        break;
    case S_EXT_QP:
        /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
        if (!(b == '\t' || (b >= 0x20 && b != 0x7f))) {
            return "Invalid chunk extension";
        }
        ch->state = S_EXT_QS;
        break;
    default:
        return "Invalid chunked body";
    }
    return NULL;
}

/* One byte of a chunk-size line (size, extensions, CRLF). Returns NULL, or why it is invalid. */
static const char *size_byte(struct wk_chunk *ch, unsigned char b)
{
    switch (ch->state) {
    case S_SIZE0:
    case S_SIZE: {
        int v = hexval(b);
        if (v >= 0) {
            if (++ch->digits > WK_CHUNK_DIGITS_MAX) {
                return "Chunk size too large";
            }
            ch->left = (ch->left << 4) | (uint64_t)v;
            ch->state = S_SIZE;
            break;
        }
        if (ch->state == S_SIZE0) {
            return "Invalid chunk size";
        }
        if (b == '\r') {
            ch->state = S_LINE_LF;
        } else if (b == ';') {
            ch->state = S_EXT_NAME0;
        } else if (b == ' ' || b == '\t') {
            ch->state = S_SIZE_WS;
        } else {
            return "Invalid chunk size";
        }
        break;
    }
    case S_LINE_LF:
        if (b != '\n') {
            return "Chunk size line not ended by CRLF";
        }
        ch->pend = 0;
        ch->line = 0;
        ch->digits = 0;
        if (ch->left == 0) {
            ch->state = S_TR0;
        } else {
            if (ch->total + ch->left < ch->total) {
                return "Chunk size too large";
            }
            ch->total += ch->left;
            ch->state = S_DATA;
        }
        break;
    default:
        return ext_byte(ch, b);
    }
    return NULL;
}

/* One byte of what frames the data: the CRLF after chunk data, trailer lines and the final CRLF
 * (S_DONE after it). Returns NULL, or why it is invalid. */
static const char *frame_byte(struct wk_chunk *ch, unsigned char b)
{
    switch (ch->state) {
    case S_DATA_CR:
        if (b != '\r') {
            return "Chunk data not followed by CRLF";
        }
        ch->state = S_DATA_LF;
        break;
    case S_DATA_LF:
        if (b != '\n') {
            return "Chunk data not followed by CRLF";
        }
        ch->pend = 0;
        ch->state = S_SIZE0;
        break;
    case S_TR0:
        if (b == '\r') {
            ch->state = S_FINAL_LF;
        } else if (tchar(b)) {
            ch->state = S_TR_NAME;
        } else {
            return "Invalid trailer field";
        }
        break;
    case S_TR_NAME:
        if (b == ':') {
            ch->state = S_TR_VALUE;
        } else if (!tchar(b)) {
            return "Invalid trailer field";
        }
        break;
    case S_TR_VALUE:
        /* field-value characters: VCHAR, obs-text, SP, HTAB */
        if (b == '\r') {
            ch->state = S_TR_LF;
        } else if (!(b == '\t' || (b >= 0x20 && b != 0x7f))) {
            return "Invalid trailer field";
        }
        break;
    case S_TR_LF:
        if (b != '\n') {
            return "Trailer line not ended by CRLF";
        }
        ch->pend = 0;
        ch->state = S_TR0;
        break;
    case S_FINAL_LF:
        if (b != '\n') {
            return "Chunked body not ended by CRLF";
        }
        ch->pend = 0;
        ch->state = S_DONE;
        break;
    default:
        return "Invalid chunked body";
    }
    return NULL;
}

int wk_chunk_parse(struct wk_chunk *ch, const char *p, size_t n, size_t *used, size_t *dlen)
{
    size_t i = 0;

    if (dlen != NULL) {
        *dlen = 0;
    }
    if (ch->state == S_ERROR) {
        *used = 0;
        return WK_CHUNK_ERROR;
    }
    if (ch->state == S_DONE) {
        *used = 0;
        return WK_CHUNK_DONE;
    }
    while (i < n) {
        unsigned char b = (unsigned char)p[i];
        const char *why;

        if (ch->state == S_DATA) {
            size_t take = n - i;
            if (take > ch->left) {
                take = (size_t)ch->left;
            }
            ch->left -= take;
            i += take;
            if (ch->left == 0) {
                ch->state = S_DATA_CR;
            }
            *used = i;
            if (dlen != NULL) {
                *dlen = take;
            }
            return WK_CHUNK_DATA;
        }
        i++;
        ch->pend++;
        if (ch->state < S_DATA) {
            if (++ch->line > WK_CHUNK_LINE_MAX) {
                return fail(ch, "Chunk size line too long", i - 1, used);
            }
            why = size_byte(ch, b);
        } else {
            if (ch->state >= S_TR0 && ch->state <= S_FINAL_LF && ++ch->line > ch->trailer_max) {
                return fail(ch, "Chunked trailer section too large", i - 1, used);
            }
            why = frame_byte(ch, b);
        }
        if (why != NULL) {
            return fail(ch, why, i - 1, used);
        }
        if (ch->state == S_DONE) {
            *used = i;
            return WK_CHUNK_DONE;
        }
    }
    *used = i;
    return WK_CHUNK_MORE;
}

uint32_t wk_chunk_trailer_bytes(const struct wk_chunk *ch)
{
    return ch->state >= S_TR0 && ch->state <= S_FINAL_LF ? ch->line - ch->pend : 0;
}

int wk_chunk_in_trailer(const struct wk_chunk *ch)
{
    return ch->state >= S_TR0 && ch->state <= S_FINAL_LF;
}

long wk_chunk_check(const char *p, size_t n, uint32_t trailer_max, uint64_t *decoded)
{
    struct wk_chunk ch;
    size_t off = 0;

    wk_chunk_init(&ch, trailer_max);
    for (;;) {
        size_t used;
        int r = wk_chunk_parse(&ch, p + off, n - off, &used, NULL);
        off += used;
        if (r == WK_CHUNK_ERROR) {
            return -1;
        }
        if (r == WK_CHUNK_DONE) {
            if (decoded != NULL) {
                *decoded = ch.total;
            }
            return (long)off;
        }
        if (r == WK_CHUNK_MORE) {
            return 0;
        }
    }
}
