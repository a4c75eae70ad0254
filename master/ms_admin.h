/* dispatcher: the master's side of the admin server: the host table (admin/adm.h) through which
 * the admin server reads the live configuration and state and asks for a reload. */
#ifndef DSP_MS_ADMIN_H
#define DSP_MS_ADMIN_H

/* Start the admin server on the master loop. Returns 0, or -1 (logged). */
int ms_admin_start(void);

#endif
