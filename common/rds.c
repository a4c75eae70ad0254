/* dispatcher: small helpers around hiredis replies. */
#include "common/rds.h"

#include <stdio.h>
#include <string.h>

const char *rds_reply_what(const redisReply *r, char *buf, size_t n)
{
    static const char *const names[] = {
        [REDIS_REPLY_STRING] = "string",   [REDIS_REPLY_ARRAY] = "array",
        [REDIS_REPLY_INTEGER] = "integer", [REDIS_REPLY_NIL] = "nil",
        [REDIS_REPLY_STATUS] = "status",   [REDIS_REPLY_ERROR] = "error",
    };

    if (r == NULL) {
        snprintf(buf, n, "no reply");
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(buf, n, "%.*s", (int)(r->len < 400 ? r->len : 400), r->str);
    } else if (r->type >= 0 && (size_t)r->type < sizeof(names) / sizeof(names[0]) &&
               names[r->type] != NULL) {
        snprintf(buf, n, "unexpected %s reply", names[r->type]);
    } else {
        snprintf(buf, n, "unexpected reply of type %d", r->type);
    }
    return buf;
}

int rds_reply_is_error(const redisReply *r, const char *code)
{
    size_t n = strlen(code);

    return r != NULL && r->type == REDIS_REPLY_ERROR && r->len >= n &&
           strncmp(r->str, code, n) == 0;
}
