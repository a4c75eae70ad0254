/* dispatcher: strict syntax of a backend's response head (SPEC, Proxying, "Strict framing"),
 * checked before http-parser, which Debian builds lenient, reads it. Pure: unit-tested. */
#include "worker/wk_internal.h"

#include <string.h>

int wk_resp_status_line(const char *p, size_t n)
{
    int status;
    size_t i;

    /* "HTTP/1.0" or "HTTP/1.1", one SP, three digits, then SP [reason] or the line end. */
    if (n < 16 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ') {
        return -1;
    }
    for (i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
    }
    if (p[12] != ' ' && p[12] != '\r') {
        return -1;
    }
    status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    /* The reason phrase: HTAB, SP, visible and obs-text bytes, up to CRLF. */
    for (i = 12; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\r') {
            break;
        }
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return -1;
        }
    }
    if (i + 1 >= n || p[i + 1] != '\n') {
        return -1;
    }
    return status;
}

int wk_resp_head_syntax(const char *p, size_t n)
{
    int status = wk_resp_status_line(p, n);

    if (status < 0) {
        return -1;
    }
    /* Lines end in CRLF, and CR appears nowhere else; no other control byte but HTAB. The head
     * ends with an empty line. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch >= 0x20 && ch != 0x7f) {
            continue;
        }
        if (ch == '\r') {
            if (i + 1 >= n || p[i + 1] != '\n') {
                return -1;
            }
            i++;
        } else if (ch != '\t') {
            return -1; /* LF without CR before it, NUL, other controls */
        }
    }
    if (memcmp(p + n - 4, "\r\n\r\n", 4) != 0) {
        return -1;
    }
    return status;
}
