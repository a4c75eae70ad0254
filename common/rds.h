/* dispatcher: hiredis glue. The one header that includes hiredis: only .c files include it, so
 * that no public header drags hiredis (and its typedefs) into other modules. */
#ifndef DSP_RDS_H
#define DSP_RDS_H

#include <stddef.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

/* Describe a reply that is not what the caller expected, for a log line: the server's error
 * text, "no reply", or "a <type> reply". Returns <buf>. Any role. */
const char *rds_reply_what(const redisReply *r, char *buf, size_t n);

/* Is <r> an error reply whose text starts with <code> ("WRONGTYPE")? */
int rds_reply_is_error(const redisReply *r, const char *code);

#endif
