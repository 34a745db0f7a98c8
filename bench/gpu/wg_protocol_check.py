#!/usr/bin/env python3
"""Run: python3 bench/gpu/wg_protocol_check.py (no GPU needed).
Checks the shared-memory ring / barrier / wgmma register-set protocol of moe_wgmma.cuh's kernels
by replaying their program order (a line-by-line transcription of the loops) for many stage counts,
K steps and tiles. All threads run the same program; other threads' data is visible only through a
barrier that follows the cp.async.wait_group covering it, and a buffer may be refilled only after a
barrier that follows every read of it (ld.shared, and the MMAs' reads until their wait_group).
Also: no A register set is rewritten while an MMA reading it is in flight, every K step is accumulated
once per tile, and (75% variant) every chunk's scratch set is added once with its own select word,
after the wait that retired it, with nothing in flight at the loop back-edge.
default_kernel() and k75s() transcribe the loops of native/cuda/moe_wgmma.cuh (moeWgmmaKernel with
and without PF, moeWg75sKernel): change them together."""
import itertools, sys

class Err(Exception): pass

class Sim:
    def __init__(s, S, total):
        s.S, s.total = S, total
        s.t = 0                      # program-order time
        s.commits = []               # per group: (buffer, step or None)
        s.completeUpTo = -1          # groups [0..completeUpTo] complete for this thread
        s.visibleUpTo = -1           # ... and visible to all threads (a barrier after the wait)
        s.bars = []                  # times of barriers
        s.buf = {}                   # buffer -> (step, group)
        s.lastReads = {}             # buffer -> list of (kind, time it ends)
        s.pendingRead = []           # MMA reads waiting for retirement: (wgGroupIdx, buffer)
        s.wgGroups = []              # per wgmma group: dict(sets=set, bufs=set, accs=set, retired=None)
        s.curGroup = None
        s.setBusy = {0: [], 1: []}   # A register set -> list of wg group idx reading it
        s.accInFlight = {}           # acc name -> list of wg group idx writing it
        s.nextLoadStep = 0
    def tick(s): s.t += 1; return s.t
    def cp_commit(s, doLoad, lbuf, expectStep):
        k = len(s.commits)
        if doLoad:
            if expectStep != k: raise Err(f"commit {k} loads step {expectStep}")
            if s.nextLoadStep != k: raise Err("loader order")
            s.nextLoadStep += 1
            # refill check: all reads of lbuf ended before a barrier that is before now
            now = s.tick()
            for kind, tend in s.lastReads.get(lbuf, []):
                if tend is None: raise Err(f"refill of buffer {lbuf} (step {k}) while an MMA reading it is in flight")
                if not any(tend < b < now for b in s.bars): raise Err(f"refill of buffer {lbuf} (step {k}) without a barrier after its {kind} read")
            s.lastReads[lbuf] = []
            s.buf[lbuf] = (k, k)
            s.commits.append((lbuf, k))
        else:
            if k < s.total: raise Err(f"commit {k} is empty but step {k} < total {s.total}")
            s.commits.append((lbuf, None))
    def cp_wait(s, n):
        s.completeUpTo = max(s.completeUpTo, len(s.commits) - 1 - n)
    def barrier(s):
        s.bars.append(s.tick())
        s.visibleUpTo = s.completeUpTo
        # MMA reads retired before this barrier are now ordered before later writes (tend recorded)
    def check_read(s, b, step, what):
        if b not in s.buf or s.buf[b][0] != step: raise Err(f"{what}: buffer {b} holds {s.buf.get(b)} not step {step}")
        g = s.buf[b][1]
        if g > s.visibleUpTo: raise Err(f"{what}: step {step} (group {g}) not visible (visible up to {s.visibleUpTo})")
    def lds(s, b, step, what):
        s.check_read(b, step, what)
        s.lastReads.setdefault(b, []).append(("lds", s.tick()))
    def loadA(s, aset, b, step):
        # writing an A register set: every MMA reading it must be retired
        for gi in s.setBusy[aset]:
            if s.wgGroups[gi]['retired'] is None: raise Err(f"A set {aset} rewritten (step {step}) while MMA group {gi} reads it")
        s.setBusy[aset] = []
        s.lds(b, step, f"loadA step {step}")
        s.aHolds = getattr(s, 'aHolds', {}); s.aHolds[aset] = step
    def mma(s, aset, b, step, acc, scaleD):
        s.check_read(b, step, f"MMA step {step}")
        if getattr(s, 'aHolds', {}).get(aset) != step: raise Err(f"MMA step {step} uses A set {aset} holding step {s.aHolds.get(aset)}")
        if s.curGroup is None:
            s.curGroup = dict(sets=set(), bufs=set(), accs=set(), retired=None)
        s.curGroup['sets'].add(aset); s.curGroup['bufs'].add(b); s.curGroup['accs'].add(acc)
        s.accState = getattr(s, 'accState', {})
        st = s.accState.get(acc)
        if scaleD == 0: s.accState[acc] = [step]
        else:
            if st is None: raise Err(f"MMA step {step} accumulates into {acc} never started")
            st.append(step)
    def wg_commit(s):
        gi = len(s.wgGroups)
        s.wgGroups.append(s.curGroup or dict(sets=set(), bufs=set(), accs=set(), retired=None))
        for a in s.wgGroups[gi]['sets']: s.setBusy[a].append(gi)
        for b in s.wgGroups[gi]['bufs']: s.lastReads.setdefault(b, []).append(("mma", None)); s.pendingRead.append((gi, b))
        for a in s.wgGroups[gi]['accs']: s.accInFlight.setdefault(a, []).append(gi)
        s.curGroup = None
    def wg_wait(s, n):
        now = s.tick()
        upto = len(s.wgGroups) - 1 - n
        for gi in range(0, upto + 1):
            if s.wgGroups[gi]['retired'] is None:
                s.wgGroups[gi]['retired'] = now
        # record end times of MMA reads
        keep = []
        for gi, b in s.pendingRead:
            if s.wgGroups[gi]['retired'] is not None:
                lst = s.lastReads.get(b, [])
                for i, (k, te) in enumerate(lst):
                    if k == "mma" and te is None: lst[i] = ("mma", s.wgGroups[gi]['retired']); break
            else: keep.append((gi, b))
        s.pendingRead = keep
    def read_acc(s, acc):
        for gi in s.accInFlight.get(acc, []):
            if s.wgGroups[gi]['retired'] is None: raise Err(f"accumulator {acc} read while MMA group {gi} writes it")
        s.accInFlight[acc] = []
        st = s.accState.get(acc); s.accState[acc] = None
        return st

def default_kernel(S, G, kSteps, myTiles, PF, dense):
    DIST = S - 1 - G
    PFX = PF and (DIST >= G + 2 or (G == 2 and DIST == 3))
    total = myTiles * kSteps
    sim = Sim(S, total)
    for st in range(DIST):
        sim.cp_commit(st < total, st, st)
    cBuf, lBuf, step = 0, DIST % S, 0
    def syncData():
        sim.cp_wait(DIST - G - 1 if PFX else DIST - G); sim.barrier()
    def issueLoads(cnt):
        nonlocal lBuf
        for i in range(cnt):
            sim.cp_commit(step + i + DIST < total, lBuf, len(sim.commits)); lBuf = (lBuf + 1) % S
    def loadA(par, b, st_): sim.loadA(par, b, st_)
    def mmaRun(par, b, st_, ks, loads):
        # dense: 4 k16 MMAs, sparse: 2 k32 MMAs per matrix; all read set par and buffer b
        sim.mma(par, b, st_, 'acc', 1 if ks > 0 else 0)
        sim.wg_commit(); issueLoads(loads); sim.wg_wait(0 if dense else 1)
    def mmaStep(par, ks, loads):
        nonlocal cBuf, step
        b = cBuf; cBuf = (cBuf + 1) % S
        loadA(par, b, step); mmaRun(par, b, step, ks, loads); step += 1
    for tile in range(myTiles):
        if not PFX:
            for ks in range(0, kSteps, 2):
                two = ks + 1 < kSteps
                syncData()
                mmaStep(0, ks, 2 if (G == 2 and two) else 1)
                if two:
                    if G == 1: syncData()
                    mmaStep(1, ks + 1, 0 if G == 2 else 1)
        else:
            for ks in range(0, kSteps, 2):
                two = ks + 1 < kSteps
                syncData()
                b0 = cBuf; cBuf = (cBuf + 1) % S
                if ks == 0: loadA(0, b0, step)
                if not two:
                    mmaRun(0, b0, step, ks, 1); step += 1; continue
                mmaRun(0, b0, step, ks, 1)
                b1 = cBuf; cBuf = (cBuf + 1) % S
                loadA(1, b1, step + 1)
                if G == 2:
                    sim.cp_commit(step + 1 + DIST < total, lBuf, len(sim.commits)); lBuf = (lBuf + 1) % S
                step += 1
                if G == 1: syncData()
                mmaRun(1, b1, step, ks + 1, 0 if G == 2 else 1)
                step += 1
                if ks + 2 < kSteps: loadA(0, cBuf, step)
        sim.wg_wait(0)
        accSteps = sim.read_acc('acc')
        want = list(range(tile * kSteps, (tile + 1) * kSteps))
        if accSteps != want: raise Err(f"tile {tile}: accumulated steps {accSteps} != {want}")
        # the epilogue reads no shared memory of the ring
    sim.cp_wait(0)
    if len([c for c in sim.commits if c[1] is not None]) != total: raise Err("not every step loaded")

def k75s(kSteps, myTiles, PF, UNR=4):
    S, G = 8, 2
    DIST = S - 1 - G
    WAITN = DIST - G - 1 if PF else DIST - G
    total = myTiles * kSteps
    sim = Sim(S, total)
    for st in range(DIST):
        sim.cp_commit(st < total, st, st)
    cBuf, lBuf, step = 0, DIST % S, 0
    sel = [None, None]
    added = []
    def syncData(): sim.cp_wait(WAITN); sim.barrier()
    def issueOne(ahead):
        nonlocal lBuf
        sim.cp_commit(step + ahead + DIST < total, lBuf, len(sim.commits)); lBuf = (lBuf + 1) % S
    def nextStage():
        nonlocal cBuf
        b = cBuf; cBuf = (cBuf + 1) % S; return b
    def mmaRun(par, xp, b, st_, scale0, loads):
        sim.mma(par, b, st_, f'X{xp}', scale0)
        sim.wg_commit()
        for i in range(loads): issueOne(i)
        sim.wg_wait(1)
    def addChunk(xp, selv):
        steps = sim.read_acc(f'X{xp}')
        if steps is None: raise Err(f"add of X{xp}: nothing accumulated")
        added.append((tuple(steps), selv))
    def chunk(xp, hasPrev, ks0):
        nonlocal step
        two = ks0 + 1 < kSteps
        syncData()
        b0 = nextStage()
        sim.lds(b0, step, "sel"); sel[xp] = ('sel', step)   # the select word of this chunk
        if (not PF) or ks0 == 0: sim.loadA(0, b0, step)
        mmaRun(0, xp, b0, step, 0, 1 if PF else (2 if two else 1))
        b1 = None
        if PF and two:
            b1 = nextStage(); sim.loadA(1, b1, step + 1); issueOne(1)
        if hasPrev: addChunk(xp ^ 1, sel[xp ^ 1])
        step += 1
        if two:
            if not PF: b1 = nextStage(); sim.loadA(1, b1, step)
            mmaRun(1, xp, b1, step, 1, 0)
            step += 1
            if PF and ks0 + 2 < kSteps: sim.loadA(0, cBuf, step)
    def drain(xp):
        sim.wg_wait(0); addChunk(xp, sel[xp])
    def body(U, ks0):
        chunk(U & 1, U > 0, ks0 + 2 * U)
        if U + 1 < UNR:
            if ks0 + 2 * (U + 1) < kSteps: body(U + 1, ks0)
            else: drain(U & 1)
        else: drain(U & 1)
    for tile in range(myTiles):
        added.clear()
        for ks0 in range(0, kSteps, 2 * UNR):
            body(0, ks0)
            # nothing may be in flight at the back-edge
            if any(g['retired'] is None for g in sim.wgGroups): raise Err("MMA in flight at the loop back-edge")
        base = tile * kSteps
        want = [tuple(range(base + c, min(base + c + 2, base + kSteps))) for c in range(0, kSteps, 2)]
        got = [a[0] for a in added]
        if got != want: raise Err(f"tile {tile}: chunks added {got} != {want}")
        for steps, selv in added:
            if selv != ('sel', steps[0]): raise Err(f"chunk {steps} added with select word of step {selv}")
    sim.cp_wait(0)

def cfgs():
    # (FMT, MODE, N) -> STAGES, as WgCfg computes them
    out = []
    for f in range(3):
        for m in range(3):
            for n in (64, 128, 256):
                NMAT = 2 if m == 0 else 1; P = 4 if f == 0 else 2
                B = n * 128; VALS = 8 * P * 512; META = 0 if f == 0 else 1024; SEL = 32 if f == 2 else 0
                STAGE = (B + NMAT * (VALS + META + SEL) + 1023) // 1024 * 1024
                S = min(8, (227 * 1024 - 1024) // STAGE)
                out.append((f, m, n, S))
    return out

bad = 0; runs = 0
for (f, m, n, S) in cfgs():
    if S < 3: continue
    G = 2 if S >= 6 else 1
    if S - 1 - G < G: continue
    for PF in (False, True):
        for kSteps in range(1, 12):
            for tiles in (1, 2, 3):
                runs += 1
                try: default_kernel(S, G, kSteps, tiles, PF, f == 0)
                except Err as e:
                    bad += 1
                    if bad < 15: print(f"default fmt={f} mode={m} N={n} S={S} PF={PF} kSteps={kSteps} tiles={tiles}: {e}")
for PF in (False, True):
    for kSteps in range(1, 20):
        for tiles in (1, 2, 3):
            runs += 1
            try: k75s(kSteps, tiles, PF)
            except Err as e:
                bad += 1
                if bad < 30: print(f"75s PF={PF} kSteps={kSteps} tiles={tiles}: {e}")
print(f"{runs} runs, {bad} protocol violations")
sys.exit(1 if bad else 0)
