/* dispatcher: active health checks. The master runs them, so exactly one process checks each
 * backend whatever the number of workers, and a worker crash never stops them. Results go to the
 * backend's runtime slot (rules in shm/shm_lb.h), where every worker reads them. */
#ifndef DSP_MS_HEALTH_H
#define DSP_MS_HEALTH_H

/* Start checking the backends of every service with a health block in the current generation,
 * and follow later generations (new backends are checked at once, removed ones no longer).
 * Call once in the master, after the first publish and before the workers are forked. Returns 0
 * or -1 (logged). */
int ms_health_init(void);

#endif
