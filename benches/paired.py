"""Paired comparison of two kleenectl builds (BENCHMARKS.md, sixth round).

    python3 benches/paired.py FAKE_FREEBSD NAME=KLEENECTL NAME=KLEENECTL [PUBLISHES]

Two fake hosts of 1,000 jails x 10 publications each (the fake tools FAKE_FREEBSD, built with
`cargo build --release --features test-fakes`), one agent of each build running at once, and
PUBLISHES (default 1,000) publishes sent to them in turn, so that the host's noise falls on both
alike. Prints each build's p50, p90, p99 and mean, and how often the first was the faster of a
pair. Both agents poll every 200 ms: the absolute numbers are higher than agent_scale's.
"""
import json, os, shutil, subprocess, sys, time, statistics
FAKE = os.path.abspath(sys.argv[1])
VERS = [(a.split('=', 1)[0], os.path.abspath(a.split('=', 1)[1])) for a in sys.argv[2:4]]
N = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
J = 1000
def setup(name, binary):
    root = f'{TMP}/{name}'
    shutil.rmtree(root, ignore_errors=True)
    for d in ['bin', 'state/pf/anchors', 'db/publications']:
        os.makedirs(f'{root}/{d}')
    os.chmod(f'{root}/db', 0o700); os.chmod(f'{root}/db/publications', 0o700)
    for t in ['pfctl', 'jls', 'jexec', 'route', 'ifconfig', 'sysctl', 'sockstat']:
        os.symlink(FAKE, f'{root}/bin/{t}')
    w = lambda rel, text: open(f'{root}/state/{rel}', 'w').write(text)
    w('jails.json', json.dumps([{"jid": 100 + i, "name": f"j{i}", "ip4": [f"10.{1 + i // 250}.{i % 250}.2"], "ip6": []} for i in range(J)]))
    w('route4', 'em0')
    w('pf/main.conf', 'nat-anchor "kleene/*"\nrdr-anchor "kleene/*"\nanchor "kleene/*"\n')
    w('host_ifconfig.json', json.dumps([{"name": "em0", "addrs": ["192.0.2.10/24"]}, {"name": "em1"}]))
    w('sysctl.json', json.dumps({"net.inet.ip.forwarding": "1", "net.inet6.ip6.forwarding": "1", "net.pf.filter_local": "1"}))
    seq = 1
    for i in range(J):
        lines = ['version: 1', f'jail: j{i}', 'publications:']
        for k in range(10):
            seq += 1
            lines += [f'- seq: {seq}', f'  spec: {10000 + i * 10 + k}:{80 + k}/tcp']
        open(f'{root}/db/publications/j{i}.yml', 'w').write('\n'.join(lines) + '\n'); os.chmod(f'{root}/db/publications/j{i}.yml', 0o600)
    tools = ''.join(f'  {t}: {root}/bin/{t}\n' for t in ['pfctl', 'jls', 'route', 'jexec', 'ifconfig', 'sysctl', 'sockstat'])
    open(f'{root}/cfg.yml', 'w').write(f'socket: {root}/sock\nstate_dir: {root}/db\npoll_interval_ms: 200\nverify_interval_ms: 3600000\nmax_publications: 1000000\ntools:\n{tools}')
    agent = subprocess.Popen([binary, 'agent', '--config', f'{root}/cfg.yml'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(f'{root}/agent.log', 'w'))
    return root, agent
TMP = __import__('tempfile').mkdtemp(prefix='kleene-paired-')
hosts = [(name, binary) + setup(name, binary) for name, binary in VERS]
for name, binary, root, agent in hosts:
    t0 = time.time()
    while len([f for f in os.listdir(f'{root}/state/pf/anchors') if f.endswith('.json')]) < J:
        assert time.time() - t0 < 120, open(f'{root}/agent.log').read()[-2000:]
        time.sleep(0.2)
time.sleep(2)
null = os.open('/dev/null', os.O_WRONLY)
fa = [(os.POSIX_SPAWN_DUP2, null, 1), (os.POSIX_SPAWN_DUP2, null, 2)]
times = {name: [] for name, *_ in hosts}
for n in range(N):
    order = hosts if n % 2 == 0 else hosts[::-1]
    for name, binary, root, agent in order:
        argv = [binary, '--socket', f'{root}/sock', 'publish', '-j', f'j{2 + n % (J - 2)}', f'em1:{10000 + n}:{8000 + n}']
        t = time.perf_counter()
        pid = os.posix_spawn(binary, argv, os.environ, file_actions=fa)
        _, st = os.waitpid(pid, 0)
        times[name].append(time.perf_counter() - t)
        assert st == 0, (name, st)
for name, binary, root, agent in hosts:
    agent.terminate(); agent.wait()
    ts = sorted(times[name])
    q = lambda p: ts[min(len(ts) - 1, int(len(ts) * p))] * 1000
    print(f'{name}: p50 {q(.5):.2f} ms  p90 {q(.9):.2f}  p99 {q(.99):.2f}  mean {statistics.mean(ts) * 1000:.2f}')
a, b = times[hosts[0][0]], times[hosts[1][0]]
wins = sum(1 for x, y in zip(a, b) if x < y)
print(f'{hosts[0][0]} faster in {wins} of {len(a)} pairs')
shutil.rmtree(TMP, ignore_errors=True)
