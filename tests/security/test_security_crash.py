"""Crash consistency in CI: `bkup serve` killed (SIGKILL) at 50+ random points of ingest, commit, prune and GC.

After every kill the integrity check is clean and every acknowledged
version reads back byte-identical; after the last, a new run completes.
The long variant (200+ kills, real processes) is bench/crash.py.
"""

from __future__ import annotations

import os
import time

from crash_kit import crash_rounds

KILLS = int(os.environ.get("BKUP_CRASH_KILLS", "50"))


def test_a_server_killed_at_random_points_loses_nothing(tmp_path):
    figures = crash_rounds(tmp_path, KILLS, seed=7, max_delay=0.6)
    print(f"\ncrash: {figures}")
    assert figures.kills == KILLS
    assert (figures.check_problems, figures.lost_versions, figures.bad_bytes) == (0, 0, 0)
    assert figures.next_runs_ok == 1
    assert figures.runs_ok > 0 and figures.chunks_verified > 0
    # The kills landed in every phase that writes.
    assert {"ingest", "commit", "finish+prune"} <= set(figures.phases), figures.phases
    assert figures.gc_runs > 0 and figures.gc_chunks_deleted > 0, "GC never ran (or never deleted anything) before a kill"


AGENT_KILLS = int(os.environ.get("BKUP_CRASH_AGENT_KILLS", "3"))


def test_an_agent_killed_mid_run_is_caught_up_by_the_next_run(tmp_path):
    import random
    import subprocess

    from crash_kit import (
        Server,
        agent_cmd,
        agent_env,
        check_storage,
        disk_tree,
        latest_run_status,
        server_tree,
        setup,
        wait_for_running_run,
    )

    rnd = random.Random(11)
    st = setup(tmp_path / "server")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    server = Server(st.env, tmp_path / "serve.log")
    env = agent_env(tmp_path)
    killed_mid_run = 0
    try:
        for i in range(AGENT_KILLS):
            for n in rnd.sample(range(30), 12):  # change, add and remove files between runs
                f = src / ("sub" if n % 3 else "") / f"file{n:02d}.bin"
                if f.exists() and rnd.random() < 0.2:
                    f.unlink()
                else:
                    f.write_bytes(rnd.randbytes(rnd.choice([10, 50_000, 900_000, 3_000_000])))
            proc = subprocess.Popen(agent_cmd(server.url, st.agent_token, src), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait_for_running_run(server.url, st.token, st.client_id, proc):
                # Until one kill has landed mid-run, kill as soon as the run is seen: on a fast
                # machine a whole run can take less than the random delay.
                time.sleep(rnd.uniform(0.0, 0.4) if killed_mid_run else 0.0)
            proc.kill()
            proc.wait()
            if latest_run_status(server.url, st.token, st.client_id) == "running":  # it never finished its run
                killed_mid_run += 1
            done = subprocess.run(agent_cmd(server.url, st.agent_token, src), env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert server_tree(server.url, st.token, st.client_id, src) == disk_tree(src)
    finally:
        server.stop()
    assert killed_mid_run >= 1, "the agent always finished before the kill"
    assert check_storage(st.env) == []
    print(f"\nagent kills mid-run: {killed_mid_run}/{AGENT_KILLS}, all caught up byte-identical")
