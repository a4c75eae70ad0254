/* dispatcher: the admin servers run by the master: the Unix-socket line protocol (admin.socket)
 * and the HTTP API with Prometheus metrics (admin.http), both on the master's event loop. Also
 * prepares the paths the workers write (access log folder and file). */
#ifndef DSP_ADM_H
#define DSP_ADM_H

/* Master, in ms_run() before the workers are forked: create missing folders, bind the admin
 * socket (refusing one a live process still serves) and the admin HTTP listener, and register
 * them with the master loop. Returns 0, or -1 after logging why (the master exits 2). */
int adm_init(void);
/* Does a live process serve the admin socket at <path>? (Logs why when it does.) Checked before
 * the listeners are bound too: a second master must not take a single connection of the live
 * one's ports (SO_REUSEPORT would let it) before it finds out and exits. */
int adm_socket_in_use(const char *path);

#endif
