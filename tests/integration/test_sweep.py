"""The start-up sweep of /dev/shm never removes a live master's generations, whatever the
sweeping process is called: a second master started from a renamed binary (as under valgrind)
leaves the first one able to publish and its workers able to adopt."""
import os
import shutil

import dsptest
from dsptest import request, route, svc, wait_until


class SweepTest(dsptest.TestCase):
    def test_renamed_master_spares_a_live_one(self):
        b = self.backend("b")
        d1 = self.dispatcher([svc("app", b)], [route("app.do", "app")])
        d2 = dsptest.Dispatcher()
        renamed = os.path.join(d2.tmp, "not-a-master")
        shutil.copy(dsptest.MASTER, renamed)
        d2.write_config(dsptest.make_config(d2.port, d2.tmp, [svc("app", b)],
                                            [route("app.do", "app")]))
        saved = dsptest.MASTER
        dsptest.MASTER = renamed
        try:
            self.start_dispatcher(d2)
        finally:
            dsptest.MASTER = saved
        gen = dsptest.generation(d1)
        # The generation d1's workers map, and a respawned worker would need, is still there.
        self.assertTrue(os.path.exists("/dev/shm/dsp.%d.%d" % (d1.proc.pid, gen)),
                        "the renamed master's start-up sweep removed a live master's generation")
        d1.hup(dsptest.make_config(d1.port, d1.tmp, [svc("app", b)],
                                   [route("app.do", "app"), route("new.do", "app")]))
        wait_until(lambda: dsptest.generation(d1) > gen, 5, "the reload published")
        wait_until(lambda: dsptest.workers_on_generation(d1, gen + 1), 5,
                   "the first master's workers on its new generation")
        self.assertEqual(request(d1.port, "/echo", host="new.do").status, 200)
        self.assertEqual(request(d2.port, "/echo", host="app.do").status, 200)
