#!/usr/bin/env python3
"""Capture loss on real captures: does apitap claim anything false?

    scripts/corpus-loss.py [--apitap BIN] [--rate 0.03] [--seeds 8] [CORPUS_DIR]

For every classic pcap of the corpus (default ../shared/corpus), drops each
record with probability RATE (seeds 1..SEEDS, deterministic), runs apitap on
the full and on the lossy file, and prints every exchange the lossy run
logged as certain (no capture_loss) that the full run did not log: same
client, method, target, status and failure. Not counted as false: an
exchange with neither status nor failure (it claims no answer, as after the
capture's end), and a response logged without its request whose status and
failure the full run logged for the same client. What is left is wrong, or
beyond what the lossy capture shows (a response lost whole in a capture that
holds no ACKs is a timeout to anyone). Prints a count per kind at the end.
"""
import argparse, json, os, random, struct, subprocess, sys, tempfile

def drop(src, dst, seed, rate):
    rng = random.Random(seed)
    b = open(src, 'rb').read()
    e = {b'\xd4\xc3\xb2\xa1': '<', b'\x4d\x3c\xb2\xa1': '<',
         b'\xa1\xb2\xc3\xd4': '>', b'\xa1\xb2\x3c\x4d': '>'}.get(b[:4])
    if e is None:
        return False
    out, i = [b[:24]], 24
    while i + 16 <= len(b):
        incl = struct.unpack(e + 'I', b[i + 8:i + 12])[0]
        rec, i = b[i:i + 16 + incl], i + 16 + incl
        if rng.random() >= rate:
            out.append(rec)
    open(dst, 'wb').write(b''.join(out))
    return True

def exchanges(apitap, pcap, log):
    subprocess.run([apitap, '-r', pcap, '--exchanges', log, '--metrics-out', os.devnull],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return [json.loads(l) for l in open(log)]
    except FileNotFoundError:
        return []

def key(e):
    return (e['client'], e.get('method'), e.get('target'), e.get('status'), e.get('failure'))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--apitap', default=os.path.join(
        os.environ.get('CARGO_TARGET_DIR', 'target'), 'release', 'apitap'))
    ap.add_argument('--rate', type=float, default=0.03)
    ap.add_argument('--seeds', type=int, default=8)
    ap.add_argument('corpus', nargs='?', default='../shared/corpus')
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    kinds = {}
    for name in sorted(os.listdir(a.corpus)):
        if not name.endswith('.pcap'):
            continue
        src = os.path.join(a.corpus, name)
        full = exchanges(a.apitap, src, os.path.join(tmp, 'full.x'))
        for seed in range(1, a.seeds + 1):
            lossy_pcap = os.path.join(tmp, 'lossy.pcap')
            if not drop(src, lossy_pcap, seed, a.rate):
                break
            want = {}
            for e in full:
                want[key(e)] = want.get(key(e), 0) + 1
            seen = {}
            for e in full:
                seen.setdefault(e['client'], set()).add((e.get('status'), e.get('failure')))
            for e in exchanges(a.apitap, lossy_pcap, os.path.join(tmp, 'lossy.x')):
                if e['capture_loss']:
                    continue
                k = key(e)
                if want.get(k, 0) > 0:
                    want[k] -= 1
                    continue
                if e.get('status') is None and e.get('failure') is None:
                    continue
                if e.get('method') is None and (e.get('status'), e.get('failure')) in seen.get(e['client'], ()):
                    continue
                kind = e.get('failure') or ('orphan' if e.get('method') is None else 'other')
                kinds[kind] = kinds.get(kind, 0) + 1
                print(f"{name} seed {seed}: {e['client']} {e.get('method')} "
                      f"{(e.get('target') or '')[:60]} status {e.get('status')} failure {e.get('failure')}")
    print('certain but not in the full capture:', sum(kinds.values()), kinds)

if __name__ == '__main__':
    sys.exit(main())
