"""The load-test library and its drills: run each drill as a module, `python -m loadtest.run --help`.

Library: client (the one HTTP load client), servers, wrk, cluster (replicas and the balancer),
probes, stats, results. Drills: run, peers, open_loop, ablation, reliability, scale, monitoring_drills,
retraining_drill, cpu_profile; apps (the baselines), slow_client (the raw attacker), make_flights.
"""
