/* dispatcher: the per-worker pools of idle keep-alive connections to backends, one list per
 * backend runtime slot. A connection enters a pool only at an exact message boundary (the
 * exchange checks that, wk_xchg.c) and leaves it on reuse, on any input, after POOL_IDLE_MS, or
 * when descriptors run out. */
#include "worker/wk_internal.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "common/dsp.h"
#include "common/net.h"
#include "shm/shm_snap.h"

#define POOL_MAX_IDLE 64 /* idle connections kept per backend, or as many as are busy */
#define POOL_IDLE_MS  30000

static void pool_remove(struct wk_upstream *u)
{
    struct wk_pool *p = &wk.pools[u->be_slot];

    if (u->pprev != NULL) {
        u->pprev->pnext = u->pnext;
    } else if (p->head == u) {
        p->head = u->pnext;
    } else {
        return; /* not pooled */
    }
    if (u->pnext != NULL) {
        u->pnext->pprev = u->pprev;
    }
    u->pnext = u->pprev = NULL;
    p->count--;
}

void wk_upstream_close(struct wk_upstream *u)
{
    if (u->x == NULL) {
        pool_remove(u);
    }
    wk_timer_disarm(&u->timer);
    xp_close(&u->xp, 1);
    wk_free_later(&u->ev);
}

int wk_upstream_pending(struct wk_upstream *u)
{
    return !xp_idle_ok(&u->xp);
}

void wk_pool_put(struct wk_upstream *u)
{
    struct wk_pool *p = &wk.pools[u->be_slot];

    int64_t busy = __atomic_load_n(&wk.rt->backends[u->be_slot].active, __ATOMIC_RELAXED);

    /* A burst wider than POOL_MAX_IDLE (HTTP/2 clients: 100 streams per connection) would
     * otherwise close and reopen backend connections all the time: keep up to as many idle as
     * were busy at once lately (the idle ones expire after POOL_IDLE_MS).
     * Bytes a TLS backend sent beyond its response would be read as the next response. */
    if (busy > (int64_t)p->hiwat || wk.now - p->hiwat_ms > POOL_IDLE_MS) {
        p->hiwat = (uint32_t)DSP_MAX(busy, 0);
        p->hiwat_ms = wk.now;
    }
    if ((p->count >= POOL_MAX_IDLE && p->count >= p->hiwat) || wk.stopping || xp_pending(&u->xp)) {
        wk_upstream_close(u); /* (u->x still set: not in a pool list) */
        return;
    }
    u->pass = wk.pass;
    u->flags &= (uint8_t)~WK_UP_F_REUSED;
    u->x = NULL;
    u->pprev = NULL;
    u->pnext = p->head;
    if (p->head != NULL) {
        p->head->pprev = u;
    }
    p->head = u;
    p->count++;
    wk_timer_arm(&u->timer, POOL_IDLE_MS);
}

struct wk_upstream *wk_pool_take(uint32_t be_slot, int tls, int careful)
{
    struct wk_pool *p = &wk.pools[be_slot];

    while (p->head != NULL) {
        struct wk_upstream *u = p->head;
        if (u->pass == wk.pass && !wk.batch_full) {
            /* Rather one pooled before this batch, which needs no look at its socket (below). */
            struct wk_upstream *o = u->pnext;
            for (int i = 0; o != NULL && i < 8; i++, o = o->pnext) {
                if (o->pass != wk.pass) {
                    u = o;
                    break;
                }
            }
        }
        pool_remove(u);
        wk_timer_disarm(&u->timer);
        if (xp_is_tls(&u->xp) != (tls != 0)) {
            wk_upstream_close(u); /* pooled before a reload switched TLS on or off */
            continue;
        }
        /* Input on an idle pooled connection closes it when its event is handled. Pooled
         * before the last epoll_wait(), anything that arrived since it was put back has its
         * event in this batch (handled already, or caught by wk_upstream_event() as older than
         * the reuse); pooled during this batch, or with events left over in the kernel, only
         * a look at the socket can tell. A request that must never be sent twice always gets
         * that look: a close already waiting there would otherwise cost it a 502. */
        if (u->pass == wk.pass || wk.batch_full || careful) {
            if (wk_upstream_pending(u)) {
                wk_upstream_close(u);
                continue;
            }
            /* Seen empty now: an event of this batch may announce bytes that were read before
             * the connection was pooled, and is no sign of anything stale. */
            u->pass = 0;
        } else {
            u->pass = wk.pass;
        }
        u->flags |= WK_UP_F_REUSED;
        return u;
    }
    return NULL;
}

void wk_upstream_timeout(struct wk_upstream *u)
{
    if (u->x == NULL) {
        wk_upstream_close(u);
    }
}

/* An idle pooled connection got an event: input means the backend closed it or sent something
 * unasked; a write edge (ACKs freeing send space) is harmless. A TLS backend may still send
 * session tickets after the exchange: those are consumed and leave it reusable. */
void wk_pool_event(struct wk_upstream *u, uint32_t events)
{
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) &&
        !(xp_is_tls(&u->xp) && !(events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) &&
          xp_idle_ok(&u->xp))) {
        wk_upstream_close(u);
    } else {
        u->flags |= WK_UP_F_WRITABLE;
    }
}

size_t wk_pool_shed(void)
{
    const struct shm_snap_hdr *s = wk.cur->snap;
    size_t n = 0;

    for (uint32_t i = 0; i < s->nbackends; i++) {
        struct wk_pool *p = &wk.pools[shm_backends(s)[i].rt_slot];
        n += wk_h2up_shed(shm_backends(s)[i].rt_slot);
        while (p->head != NULL) {
            wk_upstream_close(p->head); /* (unlinks it from the pool) */
            n++;
        }
    }
    return n;
}

int wk_backend_addr(const struct shm_snap_hdr *s, const struct shm_backend *be,
                    struct sockaddr_storage *ss, socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    if (be->family == AF_UNIX) {
        /* "unix:/path": the master checked that the path fits. */
        return net_unix_addr(shm_s(s, be->address) + NET_UNIX_PREFIX_LEN,
                             be->address.len - NET_UNIX_PREFIX_LEN, (struct sockaddr_un *)ss, sl);
    }
    if (be->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(be->port);
        memcpy(&s6->sin6_addr, be->ip, 16);
        *sl = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(be->port);
        memcpy(&s4->sin_addr, be->ip, 4);
        *sl = sizeof(*s4);
    }
    return 0;
}
