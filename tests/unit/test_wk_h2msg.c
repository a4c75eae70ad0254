/* dispatcher unit tests: the HTTP/2 client side's memory (worker/wk_h2msg.c): the request buffer
 * that grows on demand (wk_h2_buf_room) and the nghttp2 allocator whose frame buffer pages an
 * idle connection gives back (wk_h2_mem). */
#include "tests/unit/unit.h"

#include <stdlib.h>
#include <string.h>

#include "worker/wk_h2msg.h"
#include "worker/wk_internal.h"

static void test_buf_room(void)
{
    struct wk_buf b;

    memset(&b, 0, sizeof(b));
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 10, 1000, 100), -1); /* no buffer yet */
    b.data = malloc(100);
    b.cap = 100;
    memset(b.data, 'a', 60);
    b.start = 10;
    b.end = 60;
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 40, 1000, 100), 0); /* fits: the same buffer */
    CU_ASSERT_EQUAL(b.cap, 100);
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 41, 1000, 100), 0); /* grows: twice the size */
    CU_ASSERT_EQUAL(b.cap, 200);
    CU_ASSERT_EQUAL(b.start, 10);
    CU_ASSERT_EQUAL(b.end, 60);
    CU_ASSERT(memcmp(b.data, "aaaaaaaaaa", 10) == 0 && b.data[59] == 'a');
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 500, 1000, 100), 0); /* grows: to what is asked */
    CU_ASSERT_EQUAL(b.cap, 560);
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 941, 1000, 100), -1); /* beyond the most: refused, kept */
    CU_ASSERT_EQUAL(b.cap, 560);
    CU_ASSERT(b.data[59] == 'a');
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 0, 1000, 100), 0); /* 0: all it may take */
    CU_ASSERT_EQUAL(b.cap, 1000);
    CU_ASSERT_EQUAL(wk_h2_buf_room(&b, 940, 1000, 100), 0);
    free(b.data);
}

static void test_mem(void)
{
    struct wk_h2_mem m;
    nghttp2_mem *a = &m.mem;
    char *big, *small, *heap, *grown;

    wk_h2_mem_init(&m);
    m.map = 1; /* (as while the session is created) */
    big = a->malloc(16394, a->mem_user_data);
    small = a->malloc(100, a->mem_user_data);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    CU_ASSERT_PTR_NOT_NULL_FATAL(small);
    CU_ASSERT_PTR_EQUAL(m.big[0].p, big); /* its own mapping */
    CU_ASSERT_EQUAL(m.big[0].len, 20480);
    CU_ASSERT_PTR_NULL(m.big[1].p); /* (small ones come from the heap) */
    memset(big, 'x', 16394);
    memset(small, 'y', 100);
    wk_h2_mem_idle(&m); /* the pages go back: zero when touched again */
    CU_ASSERT_EQUAL(big[0], 0);
    CU_ASSERT_EQUAL(big[16393], 0);
    CU_ASSERT_EQUAL(small[99], 'y');
    CU_ASSERT_EQUAL(m.dirty, 0);
    big[0] = 'z';
    grown = a->realloc(big, 30000, a->mem_user_data); /* a new mapping, the content moved */
    CU_ASSERT_PTR_NOT_NULL_FATAL(grown);
    CU_ASSERT_EQUAL(grown[0], 'z');
    CU_ASSERT_PTR_NULL(m.big[0].p);
    CU_ASSERT_PTR_EQUAL(m.big[1].p, grown);
    m.map = 0; /* after the session is made: large blocks from the heap */
    heap = a->realloc(NULL, 20000, a->mem_user_data);
    CU_ASSERT_PTR_NOT_NULL_FATAL(heap);
    CU_ASSERT_PTR_NULL(m.big[0].p);
    a->free(heap, a->mem_user_data);
    a->free(grown, a->mem_user_data);
    CU_ASSERT_PTR_NULL(m.big[1].p);
    a->free(small, a->mem_user_data);
    a->free(NULL, a->mem_user_data);
}

UNIT_SUITE(wk_h2msg, {"buf_room", test_buf_room}, {"mem", test_mem})
