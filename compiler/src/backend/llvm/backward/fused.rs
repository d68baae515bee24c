//! The fused GPU backward (`BwdDq::Ordered` / `BwdDq::Atomic`, wgmma only): dQ computed
//! by the dK/dV kernel, five matrix products per tile instead of seven, deterministic by
//! default (FlashAttention-3's deterministic scheme).
//!
//! In: what `backward.rs` hands its kernels ([`Program`], the score and its derivative,
//! [`PtxOptions`] with `bwd_dq` not `Separate`, the kernel's [`KvBounds`] and [`Args`]).
//! Out: the bodies of two kernels, under the kinds of the separate scheme (measured on
//! an H200, B2 H16 L8192 D128 bf16 backward, one run: Ordered 403.0 / 368.8 / 340.6
//! TFLOP/s dense / causal / soft-cap + causal, OrderedBulk 466.5 / 376.4 / 346.2,
//! Atomic 497.9 / 426.5 / 394.9):
//!
//! ```text
//! DkDv (CTA per (kv block j, kv head, batch); Bc/64 warpgroups of 64 kv rows; Br = 64;
//! each warpgroup computes D / (Bc/64) columns of dQ, at least 32: at D64 with Bc = 128
//! one `m64n32k16` product per 16 kv rows, its K operand 64 bytes into the swizzled rows;
//! or, at D = Dv = 64 with the TMA producer, Br = 128: warpgroup w computes dQ's q rows
//! 64 w.. over every column, its slab of the dSᵀ tile the M-major A operand):
//!   visits, per query head h of the group and q block i in order, the (h, i) whose kv
//!   range (the dQ kernel's: closed form or per-row ranges of the q-major block maps)
//!   holds j; per visit, as the separate dK/dV kernel:
//!       Sᵀ = K Q_iᵀ, dPᵀ = V dO_iᵀ, Pᵀ, dSᵀ;  dV += Pᵀ dO_i;  dK += dSᵀ Q_i
//!   and besides:  dSᵀ -> shared memory (rows kv, columns q: the wgmma A operand of
//!   dS K read M-major);  dQ_i(part) = dS K   (warpgroup w: columns 64 w.. of dQ, or
//!   each 64-column chunk in turn with one warpgroup);
//!   Ordered: wait until DqSem[b, h, i] = end_i - 1 - j (the kv blocks of q block i
//!   add in descending order: under a causal mask block j reaches its first q block
//!   when block j + 1 has just added there, so the CTAs follow each other one tile
//!   apart), add the part into DqAccum[b, h, i] (the first adder stores), and
//!   after the next barrier one thread releases (fence.acq_rel + increment);
//!   Atomic: add the part with no wait (order free: not deterministic).
//!   OrderedBulk (kv tiles of 128; the default at D64 and D128 on sm_90, `ATTNC_BWD_DQ=ordered` in the runtime keeps `Ordered`):
//!   the same order as Ordered, but the math warps only store the part into one of
//!   DQ_SLOTS shared-memory slots (mbarrier `empty` before, `full` after) and go on; a
//!   writer warpgroup (warpgroup 2, setmaxnreg 24; the math warpgroups 240) walks the
//!   same visits and per visit: waits `full`, spins until DqSem[b, h, i] = rank, adds
//!   the slot with one `cp.reduce.async.bulk .add.f32` (the first adder: a bulk copy),
//!   frees the slot (`empty`) once the copy has read it, and releases the semaphore once
//!   its writes are done. The semaphore waits then stall the math warps only when the
//!   writer is DQ_SLOTS visits behind.
//!   `overlap` (early products; measured below): per visit
//!       [barrier: Q_i, dO_i landed]  issue Sᵀ, dPᵀ;  search visit i+1, copy its Q, dO
//!       wait Sᵀ -> P (P' = P score');  issue dV += Pᵀ dO_i
//!       wait dPᵀ -> dS = P' (dP - Delta);  dSᵀ -> shared
//!       [barrier: dS published]  issue dQ_i(part) = dS K, then dK += dSᵀ Q_i
//!       wait dQ -> part -> slot (under dK);  wait all
//!   so the tensor cores run dPᵀ under the exponentials, dV under dS and the barrier
//!   and dK under the dQ part's stores (FlashAttention-3's order); with capture gradients
//!   P and dS come from one pass as before and only dV moves before the barrier.
//!   OrderedBulk then has two writer threads (lane 0 of writer warps 0 and 1), each
//!   adding the visits of its slot, so two tiles' additions can be under way. Off by
//!   default: measured on an H200 (B2 H16 L8192 D128 bf16, one call) against the
//!   default OrderedBulk, dense 441.9 / 467.0 TFLOP/s (0.95x), causal 385.4 / 377.7
//!   (1.02x), soft-cap + causal 336.5 / 347.7 (0.97x); Atomic with it 454.4 / 422.0 /
//!   377.5. (dV and dK both before the barrier and dQ after them, its stores under no
//!   product: the same within 1% for OrderedBulk, Atomic dense 426.1.) So the order in
//!   which the products are issued is not what holds the kernel at 0.6-0.85x of the
//!   anchors (docs/performance.md, "GPU backward", session 6).
//!   `bwd_tma` (OrderedBulk only; the default at D128 since session 7): warp 2 of the
//!   writer warpgroup is a
//!   producer walking the same visits: per visit n (buffer n % 2) it waits `q_empty`,
//!   its lanes store the 64 rows of L2 and Delta, lane 0 issues the TMA copies of Q_i
//!   and dO_i (tensor maps `TmaQ`, `TmaDo`; 128-byte swizzle = the slab layout) and all
//!   arrive at `q_full` (32 arrivals + the bytes). The math warps copy only K and V
//!   (cp.async, once), wait `q_full` instead of their own copies and a barrier, and
//!   release the buffer (`q_empty`, 256 arrivals) once dV and dK have completed; so no
//!   copy of theirs is in flight at their `fence.proxy.async`. dSᵀ has two tiles (visit
//!   parity), which removes the barrier at the top of each visit: the two math
//!   warpgroups meet once per visit (the dS barrier). 225 KiB of shared memory.
//!   Measured on an H200 (B2 H16 L8192 D128 bf16, one call, TFLOP/s without / with):
//!   dense 459.3 / 549.3, causal 380.6 / 456.7, sliding 1024 206.5 / 233.6, ALiBi +
//!   causal 323.5 / 345.1, soft-cap + causal 349.9 / 399.3, document + causal 133.4 /
//!   143.4; with `overlap` as well: dense 517.0, causal 457.7.
//!   `bwd_lpt` (the runtime's default for causal-type masks since session 8,
//!   `PtxOptions::backward_for_binding`): the grid is
//!   (kv head, kv block ascending, batch), each q block's kv blocks add in ascending
//!   order (rank `j - first`) and each CTA visits its q blocks in descending order, so
//!   the longest CTAs start first and the CTAs of one q block reach it at the same visit
//!   count (a CTA waits only for CTAs of lower y: started before it).
//!   The grid's x runs backwards over kv blocks (x = 0 is the last block): CTAs start
//!   in x order, so every CTA a CTA waits for has started before it (no deadlock).
//!   `bwd_wscan` (the runtime's default for bands and block tables since session 10):
//!   the visit search tests 32 q blocks per step, a lane each (a ballot picks the first
//!   hit in the order, its range shuffled from that lane), in the math warps (after
//!   issuing Sᵀ and dPᵀ, under them), the producer warp and writer warp 0 (lane 0 adds);
//!   the same visits in the same order. A kv block of a band or a table visits a few of
//!   many q blocks, and the scalar search walked all of them (one H200, one call, bf16
//!   TFLOP/s old / new: D128 sliding 1024 226.8 / 289.4, document + causal 144.1 /
//!   213.2; D64 174.6 / 188.8 and 70.5 / 97.9). Refused with `bwd_lpt`.
//!   `bwd_wg_dq` (with `bwd_tma`, off; measured below): each math warpgroup computes
//!   the dQ part of its own 64 kv rows (`dS K` over those rows, 4 `m64n64k16` per chunk
//!   of 64 columns, every column and at q tiles of 128 every row), so it reads only its
//!   own rows of dSᵀ and the dS barrier is the warpgroup's own (named barriers 2 and 3,
//!   128 threads): the two warpgroups no longer meet per visit. Chunk 0 runs under dV and
//!   dK; warpgroup 1 stores it at once (a predicated statement: a branch or a spin while
//!   products are in flight serializes every wgmma, ptxas C7519), the other chunks after
//!   dV and dK (registers; each after a `wgmma.fence`, without which ptxas serializes
//!   every wgmma, C7512); then warpgroup 1 stores them and arrives at the slot's `half`
//!   mbarrier, warpgroup 0 waits for it and adds all its chunks to the slot (f32, the
//!   value in the slot first: a fixed order, deterministic) and alone arrives at `full`.
//!   Measured on an H200 (bf16, one call, TFLOP/s default / `bwd_wg_dq`): D128 dense
//!   548.4 / 481.9, causal 468.1 / 422.8 (longest-first), D64 (q tiles of 128) dense
//!   394.9 / 392.6, causal 312.8 / 316.6. A first version in which warpgroup 0 waited for
//!   warpgroup 1's chunk 0 before its own products (warpgroup 1 leading by a product):
//!   D128 dense 467.2, causal 416.8. So the warpgroups' meeting at the dS barrier is not
//!   what holds the kernel back: the second dQ chunk after dV and dK (one more product
//!   and wait per visit) and the slot's read-modify-write cost more than the overlap
//!   gains (docs/performance.md, "GPU backward", session 10).
//!   `bwd_scan_under` (with the TMA producer; the runtime's default at D64 since session
//!   11): the math warps search for the next visit after issuing Sᵀ and dPᵀ, as with
//!   `bwd_wscan` (measured on an H200, fused kernel alone, ms without / with: D64 dense
//!   1.681 / 1.655, causal 1.019 / 0.982; D128 dense 5.262 / 5.244, causal 2.865 /
//!   2.784-2.852, ALiBi + causal 2.778 / 2.807-2.817: off at D128).
//!   `bwd_dq_free` (OrderedBulk, off, not deterministic): the writer adds each part as
//!   soon as it is in its slot, without the semaphore (DqAccum zeroed by the host, every
//!   part adds): what the ordered chain costs (H200, B2 H16 L8192 D128, whole backward
//!   TFLOP/s ordered / free: dense 531.6 / 552.9, causal 466.3 / 472.0; D64 B4 H16 L4096
//!   dense 393.5 / 392.3, causal 312.2 / 318.2).
//!   `bwd_stmatrix`: dSᵀ stored with `stmatrix` (the same bytes at the same addresses:
//!   `store_ds_stmatrix`, checked against the per-pair stores in this module's tests) and
//!   L2/Delta pairs loaded with `ld.shared.v2`; `bwd_desc`: each operand tile's wgmma
//!   descriptors from one base plus a constant per k-step, the warpgroup index read
//!   through `shfl.sync` (warp-uniform: ptxas builds the descriptors in uniform
//!   registers); `bwd_ds_unguarded`: no P = 0 select of dS on full blocks of the identity
//!   score. Fewer instructions per visit (SASS of the D128 dense math warps' visit 741 ->
//!   452); the binding's default with the TMA producer except bands, block tables,
//!   capture gradients and q tiles of 128 with a score function (one H200, fused kernel
//!   alone in ms without / with: D128 dense 5.294 / 5.095, causal 2.985 / 2.833, D64
//!   dense 1.626 / 1.553, causal 0.957 / 0.867; docs/performance.md, session 12 (bwd)).
//!   `bwd_desc64` (with `bwd_desc`; off, the bench's `+a`): each tile's base descriptor
//!   as one 64-bit value (opaque to LLVM, which would turn the first k-steps' adds into
//!   `or`s of the low word) and one 64-bit add per k-step, so ptxas steps it with one
//!   `UIADD3.64` instead of a `UIADD3` / `ULOP3` and a `UMOV` of the high word per
//!   operand (ptxas 13.0 sm_90a, the math warps' full-block visit of the D128 dense
//!   kernel 452 -> 401 SASS instructions, no spill change). `bwd_affine_unguarded`
//!   (off, `+f`): `bwd_ds_unguarded` for a score with a constant derivative (ALiBi): full
//!   blocks compute P and dS on their own path without the P = 0 select (D128 ALiBi +
//!   causal 628 -> 564; spill stores 24 -> 16 bytes).
//!   `bwd_two_writers` (OrderedBulk; the runtime's default with `bwd_wscan`, bands and
//!   block tables, since session 12, and at D128 on dense and the causal-type closed
//!   forms, with `bwd_stats_bulk`, since session 34: causal 1.037x, ALiBi + causal
//!   1.088x, dense 1.025x, soft-cap + causal 1.019x whole backward): two writer threads as `overlap` has them (lane 0
//!   of writer warps 0 and 1, each adding the visits of its slot) without `overlap`'s
//!   product order, so visit n + 1's semaphore wait and bulk addition no longer wait
//!   for visit n's addition to complete (the same order per dQ tile: bit-identical).
//!   ncu of the one-writer kernel (H200, D128 sliding 1024): the math warps spent 16% of
//!   their stall samples waiting for a free slot (`empty`), the writer 28% of its own
//!   waiting for its bulk addition to read the slot and 14% in the release's fences;
//!   the tensor pipe was active 40% of the time. Measured (one H200, bf16, fused kernel
//!   alone, ms one / two writers): D128 sliding 1024 0.948 / 0.824, document + causal
//!   0.657 / 0.632, dense 5.278 / 5.272 (the unordered `bwd_dq_free` in an earlier call:
//!   sliding 0.825, document 0.630: two writers recover what the ordered chain cost).
//!   `bwd_store_pairs` (the same default): dK and dV stored 8 bytes per thread and
//!   instruction (`store_rows_pairs`: one shuffle per pair of n8 column groups between
//!   the lanes of a quad's pairs) instead of 4: the same ncu showed the math warps 6% of
//!   their samples in the 64 `st.global.b32` per thread (`lg_throttle`; 4M of 13M L2
//!   sectors excess), a large share where a CTA has ~17 visits. With two writers (ms):
//!   D128 sliding 0.782, document 0.593, dense 5.181; D64 sliding 0.693 -> 0.575,
//!   document 0.354 -> 0.322 (both options against neither).
//!   `bwd_visit_rec` (with `bwd_tma`, not the static `bwd_persist`; the runtime's default with
//!   `bwd_wscan` without capture gradients since session 13, and on the D128 longest-first
//!   bindings since session 16: causal 1.03x, soft-cap + causal 1.09x): the producer warp stores
//!   each visit (query head, q block, kv range, full range) in a 32-byte record of the
//!   ring buffer before its arrival at `q_full`, and after the last visit a record
//!   without one; the math warps read the record after that wait and no longer search
//!   (the writer warps still do). `bwd_band_keep` (the same default): a partial visit of
//!   an exact closed-form mask keeps element (q, kv) iff q lies in kv's row interval
//!   (`bounds::q_interval`, two i32 compares against constants per element) instead of
//!   the mask's IR and the bounds per element; launches with `KvAllPartial` set take the
//!   per-element mask. With the instruction cuts below, measured on an H200 (one call,
//!   bf16 TFLOP/s before / after): D128 sliding 1024 344.6 / 357.6, document + causal
//!   234.5 / 244.3; D64 232.7 / 256.7, 111.7 / 119.8 (docs/performance.md, session 13).
//!   `bwd_persist` (with `bwd_tma`, off; measured below): `min(kv tiles, SMs)` CTAs
//!   (`GridDim::KvPersistent`, the batch count a parameter), each taking the kv tiles
//!   (kv block, kv head, batch) `ctaid.x, ctaid.x + nctaid.x, ..` numbered in the order of
//!   the grid without it; the producer, the writer warp(s) and the math warps each loop
//!   over them, their visit counts (ring and slot phases) running on across tiles. After
//!   a tile's last visit the math warps meet at their barrier, copy the next tile's K and
//!   V and store this tile's dK and dV under the copies; the producer loads the next
//!   tile's first Q/dO as soon as a buffer is free and the writer adds the last tile's
//!   parts under the next tile. A tile waits only for tiles of lower index (a CTA takes
//!   its tiles in increasing order and every CTA is resident), so no deadlock. Measured
//!   on an H200 (bf16, one call, kernel bench, TFLOP/s default / persistent): D128
//!   sliding 1024 284.7 / 284.5, document + causal 214.7 / 186.5; D64 193.5 / 193.2,
//!   100.6 / 90.6: a CTA's prologue, epilogue and the writer's drain are not what a
//!   sliding window's short CTAs lose, and the static tile order loses the hardware's
//!   balancing on documents (docs/performance.md, "GPU backward", session 11).
//!   `bwd_doc_tiles` (session 41; with `bwd_persist_dyn`, block tables, not `bwd_lpt`
//!   itself; the runtime's default where a block mask carries the list): the kv tiles are
//!   the entries `(b, row0, rows, kj)` of [`KernelParam::DocTiles`], kv rows `row0 + kj Bc
//!   ..` of one document, the keys past `row0 + rows` outside the tile ([`Tile`]'s
//!   `row_end`: zero-filled, masked, dK/dV not stored); the ranges count entries (per
//!   batch and q block); the tiles are taken in ascending entry order, kv heads
//!   innermost, with `bwd_lpt`'s ranks and descending q visits. Measured on an H100 (one
//!   call, Python's document step, whole backward TFLOP/s against the block ranges): B1
//!   Hq32 Hkv8 L16384 D128 279.7 / 236.2 (1.184x), B2 H16 L8192 264.5 / 269.0 (0.983x);
//!   in descending order (each document's heaviest tile last) 0.96x / 1.032x.
//!   `bwd_dv_early` / `bwd_empty_late` (session 18; with OrderedBulk, not `overlap`,
//!   `bwd_pingpong`, `bwd_wg_dq`): FlashAttention-4's order after the element code —
//!   each warpgroup issues dV += Pᵀ dO (its own P rows, from registers) right after its
//!   dSᵀ stores, before the dS barrier, and waits for its free dQ slot (`empty`) only
//!   after dQ, (dV,) dK are issued and dQ has completed, right before the slot stores:
//!   before, the slot wait sat between the barrier and the first product with the tensor
//!   cores idle (ncu, session 14: 6% of the math warps' samples). ptxas 13.0 sm_90a: no
//!   C75xx, spills unchanged. Measured on an H200 (B2 H16 L8192 D128 bf16, one call,
//!   interleaved, whole backward TFLOP/s default / `+j` / `+z` / both): dense 559 / 577 /
//!   567 / 565, causal 505 / 513 / 524 / 525, ALiBi + causal 499 / - / - / 517; the
//!   binding's default at D128: `bwd_dv_early` on dense, both on causal and ALiBi-type
//!   causal bindings (docs/performance.md, session 18); since session 19 both on D64's
//!   causal and soft-cap bindings (q tiles of 128: 1.02x each) and `bwd_dv_early` on D128
//!   bands and block tables (1.01x / 1.015x).
//!   `bwd_dv_chunks` / `bwd_dk_chunks` (session 19; with `bwd_dv_early`, off: slower):
//!   P and dS in chunks of 16 q columns (dV's RS k-step), each chunk's dV step (and with
//!   `bwd_dk_chunks` its dK step) issued as soon as the chunk is rounded, a `wgmma.fence`
//!   before each and one commit group, so the exponentials and dS of the later chunks run
//!   under the tensor cores; full and partial blocks on one path (the mask and bounds
//!   `or`ed with `full`, no branch). ptxas 13.0 sm_90a: HGMMA steps interleaved with the
//!   `MUFU.EX2`s, no serialization (an injected `WARPGROUP.ARRIVE` + empty HGMMA to close
//!   the group, C7519 info), spill stores dense 0, causal 16 -> 32, ALiBi 16 -> 40 bytes;
//!   the full-block element code 222 -> 393 SASS instructions per warp (dense). Measured
//!   on an H200 (B2 H16 L8192 D128 bf16, whole backward, interleaved): dense 0.975x,
//!   causal 0.97x, ALiBi + causal 0.965x the default; with dK 0.97x / 0.97x / 0.95x
//!   (docs/performance.md, session 19 (bwd19)).
//!   `bwd_pingpong` (with the TMA producer, two math warpgroups; the runtime's default
//!   for D64 without mask or score since session 13): the math warpgroups take turns in
//!   their element code, as the forward's
//!   ping-pong: warpgroup 1 computes visit n's P and dS after warpgroup 0 has (named
//!   barrier `BAR_TURN + 1`), warpgroup 0 visit n + 1's after warpgroup 1's visit n
//!   (`BAR_TURN`), so one warpgroup's products run while the other computes. The per-visit
//!   barrier of both warpgroups goes: each warpgroup computes visit n - 1's dQ part in
//!   visit n (the turns order the other warpgroup's dSᵀ stores before it), in one group
//!   with visit n's dV and dK, then adds it to visit n - 1's slot; warpgroup 0 waits
//!   (`BAR_FREE`) before it overwrites a dSᵀ tile until warpgroup 1's dQ product that read
//!   it has completed. Per visit and warpgroup: [turn] P, dS, dSᵀ stored [turn to the
//!   other]; dV, dK, dQ(n - 1) issued and waited for; dQ(n - 1) into its slot; the next
//!   visit's search, its Sᵀ and dPᵀ issued and waited for (the first visit's before the
//!   loop, the last visit's dQ after it). At most the accumulators of dV, dK, S and dP
//!   (or dQ) live at once, as before: ptxas 13.0 / 13.5 sm_90a, D128 dense 24 bytes of
//!   spill stores, no serialized wgmma. The same products and additions in the same
//!   order per dQ tile (bit-identical gradients); ignored with capture gradients,
//!   `overlap`, `bwd_wg_dq`, `bwd_persist` and without the TMA producer. Measured on an
//!   H200 (bf16, fused kernel alone in ms without / with): D64 B4 H16 L4096 dense 1.561 /
//!   1.490, 1.571 / 1.506-1.515 (two calls), causal 0.865 / 0.868, ALiBi + causal (q tiles
//!   of 128) 0.897 / 0.923; D128 B2 H16 L8192 dense 5.180 / 5.193, causal 2.859 / 2.828,
//!   ALiBi + causal 2.745 / 2.763. So the tensor cores' idle time during the element code
//!   is not what holds the D128 kernel: serializing the two warpgroups' element code
//!   costs what the overlap gains (the element code is latency-bound per warp, the two
//!   warpgroups' copies overlap each other as well as they overlap the products).
//!   `bwd_stats_early` (off; the bench's `+h`): where a visit waits for
//!   Sᵀ and dPᵀ before its element code, the visit's L2/Delta loads are issued before
//!   that wait, under the products (ncu, H200, D128 dense default: the first FADD/FFMAs
//!   after the wait held 7% of the math warps' stall samples, short scoreboard on those
//!   `ld.shared`; ptxas 13.0 sm_90a hoists them above the Sᵀ issue, 0 spills at D128
//!   dense/causal, 64 bytes ALiBi, 216-440 at D64's q tiles of 128). `bwd_p_under_dp`
//!   (off; `+e`; q tiles of 64, and D64's of 128 since session 19, where with `+j+z` it is
//!   FlashAttention-4's hdim-64 visit: its tile is ours; with `bwd_dv_early` dV is issued
//!   after the dSᵀ stores): a visit waits for Sᵀ alone, computes P
//!   while dPᵀ runs, then waits for dPᵀ and computes dS (FlashAttention-3's order for P,
//!   `overlap`'s element code without its dV before the dS barrier; the exponentials were
//!   15% of the math warps' samples with the tensor cores idle), dS without the P = 0
//!   select on full blocks of the identity score with `bwd_ds_unguarded`; ptxas 13.0: 0 /
//!   8 / 116 bytes of spills at D128 dense / causal / ALiBi (docs/performance.md, "GPU
//!   backward", session 14). Both measured slower in session 14's final check (one
//!   H200, D128 TFLOP/s default / `+h` / `+e`: dense 562.5 / 532.2 / 511.3, causal
//!   490.1 / 465.6 / 468.0).
//!   `bwd_ping_next` (with `bwd_pingpong`, off; `+n`): after a warpgroup's turn dV and
//!   dK are one group and the last visit's dQ part another; once dV and dK are done the
//!   Q/dO buffer goes back, the next visit is searched, its buffer waited for and its Sᵀ
//!   issued behind the dQ part; once the part is done it goes to its slot and the next
//!   dPᵀ is issued (before: all three waited for, then the slot, the search, the buffer
//!   and Sᵀ, dPᵀ, the tensor cores idle in between). Slower on an H200 (session 21,
//!   D64 B4 H16 L4096 whole backward TFLOP/s: dense 425.3 against 440.3, the fused
//!   kernel 3% slower; causal with the turns 380.4 against 374.7 without it and 384.8
//!   for the default without turns; not profiled: the slot's stores and the search now
//!   run under Sᵀ, ptxas 13.0 spills 12 bytes instead of 8) (docs/performance.md,
//!   "Session 21 (bwd64x)").
//!   `bwd_exp_emu` (off; `+m1` .. `+m8`): on full blocks of the identity or a general
//!   score without capture gradients, `k` of every 8 exponentials of the thread's
//!   fragment on the FMA pipe (`ex2_poly`: round by 1.5 * 2^23, a degree-3 polynomial,
//!   the exponent added as an integer) instead of `MUFU.EX2`. Measured on an H200
//!   (session 15, whole backward ms, interleaved): D128 dense `+m2` 4.85-4.89 vs
//!   4.83-4.97, `+m4` 5.04, `+m8` 5.28; causal 2.80 vs 2.79-2.80, `+m8` 2.93; D64 dense
//!   `+m2` 1.630 vs 1.540: the SFU's throughput is not what holds the element code.
//!   `bwd_pdl` (the runtime's default for bands and block tables since session 15):
//!   every thread lets the dQ conversion start first thing (`griddepcontrol.launch_dependents`);
//!   the writer warpgroup waits for the pre kernel (`griddepcontrol.wait`) before its
//!   first semaphore, record or L2/Delta access, the math warps after issuing the copies
//!   of K and V; the runtime launches this kernel and the conversion with programmatic
//!   stream serialization. With `bwd_convert_early` (the same default; OrderedBulk,
//!   ordered, not persistent) the writer that adds a dQ tile's last part (rank end -
//!   first - 1) releases the semaphore with `DQ_DONE_FLAG` besides the increment, and
//!   each writer thread adds 1 to `DqSem[B Hq nq]` once its last addition is released:
//!   the conversion's CTA of a tile starts on that flag (or on the count of all the
//!   grid's writers), under this kernel's tail (one H200, session 15, whole backward
//!   TFLOP/s: D128 document + causal 263.4 -> 277.6, sliding 1024 391.1 -> 394.9).
//!   q tiles of 80 ([`q80`]; `PtxOptions::backward_q80`, off: dense D128 only, the
//!   kernel bench's `+q`): FlashAttention-3 / -4's dense hdim-128 tile. Sᵀ and dPᵀ are
//!   `m64n80k16` (40 registers each) whose accumulators start at -L2 / (scale log2 e) and
//!   -Delta (so the element code holds no statistics: dK, dV, Sᵀ, dPᵀ and 40 of them
//!   would need 248 of the 240 registers), dV and dK take 5 k-steps of the P and dS
//!   fragments, dS is stored un-transposed (q rows x kv columns, `stmatrix .trans`) and
//!   each math warpgroup computes `dQᵀ = Kᵀ dSᵀ` for its 64 of D's rows (K's slab read
//!   M-major, dS K-major, 8 k-steps), stored into one dQ slot (40 KiB: two do not fit next
//!   to 80-row Q/dO buffers) in its own fragment order, which the conversion transposes
//!   (`convert::convert_t_body`). Deterministic (the same ordered chain over q blocks of
//!   80). Measured on an H200 (session 16, B2 H16 L8192 D128 dense, interleaved, ms
//!   default / q80): fused kernel 5.160, 5.147 / 5.135, 5.131 (0.996x), conversion 0.054
//!   / 0.062, whole backward within the runs' spread: off.
//!   `bwd_stat_acc` (off; the kernel bench's `+w1` / `+w2`): q tiles of 80's accumulator
//!   starts at q tiles of 64 — dPᵀ from -Delta (1), Sᵀ from -L2 / (scale log2 e) too (2,
//!   the identity score), loaded before the fence in front of Sᵀ, so the element code
//!   loads fewer statistics and dS' = P dP' is one multiply. Measured on an H200 (session
//!   20, B2 H16 L8192 D128, whole backward, interleaved): dense 1.004x / 1.011x (fused
//!   kernel 1.00x), causal 1.002x / 0.994x, ALiBi + causal 0.991x: no faster.
//!   `bwd_s_ahead` (off; the kernel bench's `+c`; with `bwd_dv_early` at q tiles of 64):
//!   the next visit's Sᵀ is issued under this visit's dK, after dQ's wait and its slot
//!   stores (its buffer's `q_full` waited for there: with visit records always, the
//!   producer arrives for the end's record too; else only with a next visit, and without
//!   one Sᵀ reads this visit's buffer, never used), the first visit's before the loop;
//!   dV's and dK's waits leave it in flight (`wait_group 1`), the loop top issues dPᵀ
//!   alone and the end waits for the last Sᵀ. So the loop top (dK's wait, the buffer given
//!   back, the record or the search, dPᵀ's descriptors) runs with Sᵀ on the tensor cores.
//!   ptxas 13.0 sm_90a: no C75xx, Sᵀ in the same registers across the back edge (no
//!   copies), spill stores unchanged (dense 0, causal 16, ALiBi 16 bytes). Not yet
//!   measured on a GPU (docs/performance.md, session 21 (bwd21)).
//!   `bwd_persist_dyn` (with `bwd_persist`; the kernel bench's `+P`; the default on D64's
//!   causal-type bindings without a score function since session 23, on every band and
//!   block table and every D64 causal-type binding since session 24): the tiles
//!   from a global counter instead of the static order. A CTA's first tile is ctaid.x;
//!   after producing a tile's visits (and with visit records its end record) the producer
//!   warp's lane 0 takes the next, nctaid.x + `atom.add(DqSem[tiles + 2], 1)` (the word
//!   after the writers' count and the conversions' fallback count, zeroed with the
//!   semaphores by every launch: no extra memset, no reset), shuffles it to its warp and
//!   hands it over through a ring of two ids in shared memory (`TILE_RING_BYTES`:
//!   mbarriers `full`, one arrival, and `empty`, every math thread and every writer thread
//!   that walks the tiles); the math warps read it where the static order added
//!   nctaid.x, the writer warp(s) after each tile's additions. Tiles are taken in
//!   increasing order (the grid's order: longest first on the causal-type bindings) by
//!   resident CTAs (one per SM, at most as many as SMs), each CTA's in increasing order,
//!   so a tile still waits only for tiles of lower index, all taken by running CTAs: no
//!   deadlock. With visit records (the defaults on causal-type bindings, bands and
//!   tables, and so `bwd_dv_early` / `bwd_empty_late`) each tile's end record takes a
//!   ring buffer of its own: the producer counts it, the math warps give it back at once
//!   and index the ring by visits plus ends (the dQ slots still by visits, as the
//!   writer). With `bwd_convert_early` each writer thread counts itself once per tile
//!   (the conversion's count of every writer of the grid is then the same). Refused with
//!   `bwd_s_ahead` and `bwd_pingpong`. ptxas 13.0 sm_90a: no C75xx; spill stores D128
//!   causal / ALiBi 68 bytes (default 16), sliding 200 (148), documents 24 (28), mostly
//!   in the producer and writer warps (24 registers); the math warps spill only the
//!   tile id, once per tile.
//!   `bwd_stats_bulk` (the kernel bench's `+b`; with the TMA producer; the default at D64
//!   without a score function since session 23, on every D64 binding and D128 dense since
//!   session 24, at D128's causal-type closed forms with two writers since session 34):
//!   the
//!   producer's per-visit L2 and Delta rows come as two bulk copies (`cp.async.bulk`,
//!   lane 0, completing on the buffer's `full` with Q and dO: FlashAttention-4's
//!   `load_LSE` / `load_dPsum`) instead of per-lane global loads and shared stores (at
//!   D64's q tiles of 128 four dependent global round trips between the `empty` wait and
//!   the TMA issue, on the path to the math warps' `q_full`); q tiles past Lq or rows not
//!   16-byte aligned keep the per-lane path. One H200 (session 23, whole backward,
//!   interleaved): D64 dense 1.10x, causal 1.02x; D128 causal 0.98x (not there). Session
//!   24: D64 sliding 1.02x, documents 1.026x, ALiBi 1.009x, soft-cap 1.002x; D128 dense
//!   1.009x (five pairs), sliding and documents even (not there) (docs/performance.md,
//!   "Session 24").
//! Dq (convert; CTA per (q block, query head, batch)): dQ = scale * DqAccum (0 where no
//!   kv block added: DqSem = 0, Ordered and OrderedBulk; Atomic's DqAccum is zeroed
//!   before the dK/dV kernel), rounded to the input type; with `bwd_pdl` after
//!   `griddepcontrol.wait`, or with `bwd_convert_early` once its tile is flagged
//!   (`backward/convert.rs`).
//! ```
//!
//! DqAccum holds each q_block x D tile in the accumulator order of the warps that add it
//! (m16 row group, n8 column group, lane, the lane's four values): every thread adds 16
//! contiguous bytes at a time (`red.global.add.v4.f32`; OrderedBulk: stores them at the
//! same offsets of its slot, which the bulk copy adds as one block), and the convert
//! kernel undoes the order. With `Ordered` the additions into an element happen in one fixed order
//! (descending kv block, then the fixed order of query heads within a CTA cannot
//! interleave: each (b, h, i) has its own semaphore), so the same inputs give
//! bit-identical dQ; capture gradients are summed here as the separate dQ kernel does
//! (integer words, `backward.rs` "Capture gradients").

use super::{
    Acc, BandKeep, CapCtx, Common, Desc, DescBase, DkDvTiles, ElemCtx, Pos, PosBase, acc_get,
    acc_set, acc_to_a, acc_vars, blocks, capture_grads, common, count_trailing_zeros,
    dkdv_epilogue, dkdv_store, ds_chunk, frag_col_stat, frag_col0, frag_element, frag_pos,
    frag_row_stats, from_flat, grad_ds, grad_p, grad_scores, load_q_block, p_chunk, slab_kstep,
    slice_base, to_flat, warp_ballot, wg_ab, wg_ab_step, wg_abt, wg_result,
};
use crate::backend::llvm::bounds::{KvBounds, q_interval_ir};
use crate::backend::llvm::cta::Args;
use crate::backend::llvm::gpu::{Gpu, R, SmemTile, Var, WgmmaA};
use crate::backend::llvm::uniform::TileBox;
use crate::backend::llvm::{BwdDq, KernelParam, LlvmError, Mma, PtxOptions};
use crate::ir::{Function, Program};
use inkwell::IntPredicate;
use inkwell::basic_block::BasicBlock;
use inkwell::values::{BasicValue, FloatValue, IntValue};

/// [`PtxOptions::bwd_visit_rec`]: bytes of one visit record (seven i32 words: found,
/// query head, q block, first, end, full first, full end).
pub const VISIT_REC_BYTES: u32 = 32;

/// [`PtxOptions::bwd_persist_dyn`]: bytes of the tile ring (two u32 tile ids, then four
/// mbarriers: full 0, full 1, empty 0, empty 1).
pub const TILE_RING_BYTES: u32 = 8 + 4 * 8;

/// `BwdDq::OrderedBulk`: dQ parts in shared memory a CTA's math warps may be ahead of
/// its writer by.
pub const DQ_SLOTS: u32 = 2;

/// `BwdDq::OrderedBulk`: registers per thread after `setmaxnreg` of the writer
/// warpgroup and of each math warpgroup. `setmaxnreg.inc` waits for registers the CTA
/// holds, i.e. what the launch allocated (384 threads: 168 each, 64512); two math
/// warpgroups: 128 x 24 + 256 x 240 = 64512 ([`register_split_fits`]; a split of
/// 65536 hangs every CTA: measured on an H200). ptxas -v (D128 bf16): dense, causal,
/// soft-cap no spills, ALiBi 116 bytes of spill stores, a relative-position table 200
/// (the other schemes at 255 registers: 32 and 52).
const WRITER_REGS: u32 = 24;
const MATH_REGS: u32 = 240;

/// The writer warpgroup's and each math warpgroup's registers after `setmaxnreg` under
/// `o` ([`PtxOptions::bwd_writer_regs`]: the writer's, 0 = [`WRITER_REGS`]; the math
/// warpgroups' the most, in multiples of 8 and at most [`MATH_REGS`], that fits the
/// 384-thread launch's 168 per thread with it).
pub fn register_split(o: &PtxOptions) -> (u32, u32) {
    let writer = match o.bwd_writer_regs {
        0 => WRITER_REGS,
        w => w,
    };
    // what the default split takes: the launch's whole allocation
    let launch = 128 * WRITER_REGS + 256 * MATH_REGS;
    let math = launch.saturating_sub(128 * writer) / 256 / 8 * 8;
    (writer, math.min(MATH_REGS))
}

/// Whether `n` is a [`PtxOptions::bwd_writer_regs`] the fused kernel takes: 0 (the
/// default, 24) or a multiple of 8 in 24..=56.
pub fn writer_regs_allowed(n: u32) -> bool {
    n == 0 || (n.is_multiple_of(8) && (WRITER_REGS..=56).contains(&n))
}

/// Named barrier of the math warps (`BwdDq::OrderedBulk`: the writer warpgroup takes
/// no part in their barriers).
const BAR_MATH: u32 = 1;

/// `PtxOptions::bwd_pingpong`: named barriers `BAR_TURN + w`, at which math warpgroup `w`
/// waits for the other's element code to end (the other arrives), and `BAR_FREE`, at
/// which warpgroup 0 waits (before it stores a dSᵀ tile) until warpgroup 1's dQ product
/// that read the tile has completed (warpgroup 1 arrives).
const BAR_TURN: u32 = 2;
const BAR_FREE: u32 = 4;

/// Whether the `setmaxnreg` split of a CTA of `math` and `writer` threads fits what its
/// launch allocates: ptxas caps `.maxntid` threads (one CTA per SM) at the multiple of
/// 8 registers that fits the SM's 65536, and `setmaxnreg.inc` waits until the CTA's
/// pool has the registers, so a split above the launch's allocation waits forever.
pub fn register_split_fits(math: u32, writer: u32, split: (u32, u32)) -> bool {
    let threads = math + writer;
    let cap = (65536 / threads / 8 * 8).min(248);
    let (w_regs, m_regs) = split;
    // the math warps' count only grows (`inc`), the writer's only shrinks (`dec`)
    (w_regs..=m_regs).contains(&cap) && m_regs * math + w_regs * writer <= cap * threads
}

/// Whether the fused kernel's Q, dO, L2 and Delta come from a producer warp
/// ([`PtxOptions::bwd_tma`], under `BwdDq::OrderedBulk` only).
pub fn tma_producer(o: &PtxOptions) -> bool {
    o.bwd_tma && o.bwd_dq == BwdDq::OrderedBulk
}

/// `PtxOptions::bwd_tma`: the writer warpgroup's warp that loads each visit's Q, dO
/// (TMA, lane 0) and L2, Delta (every lane) — not 0 or 1, the dQ writers' warps.
const PRODUCER_WARP: u32 = 2;

/// Threads of the writer warpgroup of the fused dK/dV kernel (`BwdDq::OrderedBulk`),
/// after the math warps; 0 for the other schemes.
pub fn writer_threads(o: &PtxOptions) -> u32 {
    if o.bwd_dq == BwdDq::OrderedBulk {
        128
    } else {
        0
    }
}

/// The fused scheme's extra requirements (on top of the backward's).
pub(super) fn validate(o: &PtxOptions) -> Result<(), LlvmError> {
    if o.mma != Mma::Wgmma {
        return Err(LlvmError::Unsupported(
            "dQ fused into the dK/dV kernel needs the wgmma path".into(),
        ));
    }
    if o.q_block != 64 && !(o.q_block == 128 && q128_fits(o) && !o.overlap) && !q80_fits(o) {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ: Br must be 64, or 128 at D = Dv = 64 with the TMA producer, kv tiles of 128 and no `overlap`, or 80 at D = Dv = 128 ({}) (got {})",
            Q80_NEEDS, o.q_block
        )));
    }
    if o.bwd_stat_acc > 2 {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ: bwd_stat_acc is 0, 1 (Delta in dPᵀ's start) or 2 (and L2 in Sᵀ's) (got {})",
            o.bwd_stat_acc
        )));
    }
    if o.bwd_exp_emu > 8 {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ: bwd_exp_emu counts the emulated exponentials of every 8 (got {})",
            o.bwd_exp_emu
        )));
    }
    let n_wg = o.kv_block / 64;
    let bytes = super::DkDvTiles::new(o).bytes;
    if bytes > 227 * 1024 {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ: {bytes} bytes of shared memory (at most 227 KiB)"
        )));
    }
    if o.bwd_tma && !tma_producer(o) {
        return Err(LlvmError::Unsupported(
            "fused dQ: TMA loads of Q/dO need the bulk additions' writer warpgroup".into(),
        ));
    }
    if !writer_regs_allowed(o.bwd_writer_regs) {
        return Err(LlvmError::Unsupported(format!(
            "bwd_writer_regs: a multiple of 8 in 24..=56 (got {})",
            o.bwd_writer_regs
        )));
    }
    if tma_producer(o)
        && !(o.d.is_multiple_of(64) && o.dv.is_multiple_of(64) && o.q_block.is_multiple_of(16))
    {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ with TMA loads: D and Dv multiples of 64 (got {}, {})",
            o.d, o.dv
        )));
    }
    if o.bwd_dq == BwdDq::OrderedBulk
        && (n_wg != 2 || !register_split_fits(n_wg * 128, writer_threads(o), register_split(o)))
    {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ with bulk additions: kv tiles of 128 (two math warpgroups; got {})",
            o.kv_block
        )));
    }
    if o.bwd_persist && !tma_producer(o) {
        return Err(LlvmError::Unsupported(
            "fused dQ with persistent CTAs (bwd_persist): the TMA producer".into(),
        ));
    }
    if o.bwd_persist_dyn && !(o.bwd_persist && tma_producer(o)) {
        return Err(LlvmError::Unsupported(
            "fused dQ: the tile counter (bwd_persist_dyn) needs persistent CTAs (bwd_persist) and the TMA producer".into(),
        ));
    }
    if o.bwd_doc_tiles && !(super::persist_dyn(o) && !o.bwd_lpt && o.q_block != 80) {
        return Err(LlvmError::Unsupported(
            "fused dQ on document kv tiles (bwd_doc_tiles): the tile counter (bwd_persist_dyn) with the TMA producer, not bwd_lpt or q tiles of 80".into(),
        ));
    }
    if o.bwd_persist_dyn && (o.bwd_s_ahead || o.bwd_pingpong) {
        return Err(LlvmError::Unsupported(
            "fused dQ: the tile counter (bwd_persist_dyn) without bwd_s_ahead or bwd_pingpong"
                .into(),
        ));
    }
    if o.bwd_visit_rec
        && ((o.bwd_persist && !o.bwd_persist_dyn) || o.bwd_pingpong || !tma_producer(o))
    {
        return Err(LlvmError::Unsupported(
            "fused dQ: visit records (bwd_visit_rec) need the TMA producer, without static persistent CTAs (bwd_persist without bwd_persist_dyn) or bwd_pingpong".into(),
        ));
    }
    if o.bwd_wscan && o.bwd_lpt {
        // one device run (session 10): a D128 GQA band with Lq < Lkv in this order did
        // not finish within the test's time limit (the D64 case passed); not resolved
        return Err(LlvmError::Unsupported(
            "fused dQ: the warp-wide visit search (bwd_wscan) with the longest-first order (bwd_lpt)".into(),
        ));
    }
    if o.bwd_wg_dq && !(tma_producer(o) && n_wg == 2 && !o.overlap && o.d.is_multiple_of(64)) {
        return Err(LlvmError::Unsupported(
            "fused dQ per warpgroup (`bwd_wg_dq`): the TMA producer, two math warpgroups, no `overlap`, D a multiple of 64".into(),
        ));
    }
    if o.bwd_dq_free && o.bwd_dq != BwdDq::OrderedBulk {
        return Err(LlvmError::Unsupported(
            "fused dQ: unordered bulk additions (`bwd_dq_free`) need the bulk scheme".into(),
        ));
    }
    if o.d / n_wg < 32 {
        return Err(LlvmError::Unsupported(format!(
            "fused dQ: each of the {n_wg} warpgroups computes at least 32 columns of dQ (D={})",
            o.d
        )));
    }
    Ok(())
}

/// One visit scan's loop over (query head, q block) (`scan_loop` in `dkdv_dq_body`): the
/// current query head and q block, the q block's variable (the body moves it on), the
/// loop's head block (the next step), and the hit and done blocks.
struct ScanLoop<'ctx> {
    hi: IntValue<'ctx>,
    qb: IntValue<'ctx>,
    s_qb: Var<'ctx>,
    head: BasicBlock<'ctx>,
    hit: BasicBlock<'ctx>,
    done: BasicBlock<'ctx>,
}

/// One visit of the fused kernel: (query head index in the group, q block) and that q
/// block's kv range `[first, end)` with its full part `[ff, fe)`.
struct Visit<'ctx> {
    found: Var<'ctx>,
    hi: Var<'ctx>,
    qb: Var<'ctx>,
    first: Var<'ctx>,
    end: Var<'ctx>,
    ff: Var<'ctx>,
    fe: Var<'ctx>,
}

impl<'ctx> Visit<'ctx> {
    fn new(g: &Gpu<'ctx>) -> R<Self> {
        let v = || g.var(g.i32, g.c32(0));
        Ok(Visit {
            found: g.var(g.i1, g.cbool(false))?,
            hi: v()?,
            qb: v()?,
            first: v()?,
            end: v()?,
            ff: v()?,
            fe: v()?,
        })
    }
    fn copy_from(&self, g: &Gpu<'ctx>, o: &Visit<'ctx>) -> R<()> {
        for (a, b) in [
            (&self.found, &o.found),
            (&self.hi, &o.hi),
            (&self.qb, &o.qb),
            (&self.first, &o.first),
            (&self.end, &o.end),
            (&self.ff, &o.ff),
            (&self.fe, &o.fe),
        ] {
            g.set(a, g.get(b)?)?;
        }
        Ok(())
    }
}

/// A kv tile of the fused kernel: (batch, kv head, kv block `jb`), its first kv row, the
/// K and V slices and whether it runs past its last key. With `bwd_doc_tiles` `jb` is the
/// tile's entry in the document tile list (what the ranges count) and `row_end` its
/// document's end; else `row_end` is Lkv.
#[derive(Clone, Copy)]
struct Tile<'ctx> {
    b: IntValue<'ctx>,
    hk: IntValue<'ctx>,
    jb: IntValue<'ctx>,
    kv0: IntValue<'ctx>,
    row_end: IntValue<'ctx>,
    kbase: inkwell::values::PointerValue<'ctx>,
    vbase: inkwell::values::PointerValue<'ctx>,
    kv_tail: IntValue<'ctx>,
}

/// dV's and dK's products of one visit before the dS barrier: dV issued (its accumulator,
/// valid after a wait) and dK still to issue (the A fragments of dS), or both still to
/// issue (from P and dS).
enum Products<'ctx> {
    DvIssued(Vec<FloatValue<'ctx>>, Vec<[IntValue<'ctx>; 4]>),
    // bwd_dk_chunks: dV and dK both issued (their accumulators), one commit group
    BothIssued(Vec<FloatValue<'ctx>>, Vec<FloatValue<'ctx>>),
    Later(Acc<'ctx>, Acc<'ctx>),
    // bwd_p_under_dp: P and dSᵀ as A fragments, nothing issued
    Ready(Vec<[IntValue<'ctx>; 4]>, Vec<[IntValue<'ctx>; 4]>),
}

/// Byte offset of the dQ tile of (b, h, q block) in DqAccum (i64).
fn tile_offset<'ctx>(
    g: &Gpu<'ctx>,
    (b, hq, h): (IntValue<'ctx>, IntValue<'ctx>, IntValue<'ctx>),
    nq: IntValue<'ctx>,
    qb: IntValue<'ctx>,
    tile_bytes: u32,
) -> R<IntValue<'ctx>> {
    let tile = g.add(g.mul(g.add(g.mul(b, hq)?, h)?, nq)?, qb)?;
    g.mul(g.zext64(tile)?, g.c64(tile_bytes as i64))
}

/// The address (i64) of a global pointer plus `off` bytes.
fn addr_of<'ctx>(
    g: &Gpu<'ctx>,
    p: inkwell::values::PointerValue<'ctx>,
    off: IntValue<'ctx>,
) -> R<IntValue<'ctx>> {
    let base = g.b.build_ptr_to_int(p, g.i64, "")?;
    g.add(base, off)
}

/// Stores this warp's dSᵀ accumulator (kv rows `16 warp ..`, q columns `0..Br`) rounded to
/// the input type into the slab tile `t`, `t_off` bytes further (64-column slabs
/// `t.rows * 128` bytes apart: one at Br = 64, two at Br = 128).
fn store_ds<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    (t, t_off): (&SmemTile, IntValue<'ctx>),
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    ds: &Acc<'ctx>,
) -> R<()> {
    if q80(o) {
        return store_ds_q80(g, o, (t, t_off), warp, lane, ds);
    }
    if o.bwd_stmatrix {
        return store_ds_stmatrix(g, o, (t, t_off), warp, lane, ds, 0);
    }
    // element (nt, i): row 16 warp + lane / 4 + 8 (i / 2), column 8 nt + 2 (lane % 4) + i % 2;
    // the row's swizzle is (lane / 4) % 8 = lane / 4 for both halves
    let r0 = g.add(g.mul(warp, g.c32(16))?, g.lshr(lane, g.c32(2))?)?;
    let sw = g.lshr(lane, g.c32(2))?;
    let quad = g.mul(g.and(lane, g.c32(3))?, g.c32(4))?;
    for hr in 0..2 {
        let row = g.add(r0, g.c32(8 * hr as i64))?;
        let base = g.add(
            g.add(g.mul(row, g.c32(128))?, quad)?,
            g.add(t_off, g.c32(t.offset as i64))?,
        )?;
        for (nt, x) in ds.iter().enumerate() {
            let chunk = g.xor(g.c32(nt as i64 % 8), sw)?;
            let slab = (nt as u32 / 8) * t.rows * 128;
            let off = g.add(g.add(base, g.c32(slab as i64))?, g.shl(chunk, g.c32(4))?)?;
            let packed = g.pack2(o.input, x[2 * hr], x[2 * hr + 1])?;
            g.store(g.smem_at(off)?, packed)?;
        }
    }
    Ok(())
}

/// [`store_ds`] with [`PtxOptions::bwd_stmatrix`]: the same bytes at the same addresses
/// through `stmatrix.sync.aligned.m8n8.x4.shared.b16`, one per pair `(2p, 2p + 1)` of n8
/// column groups (Br / 16 per thread instead of Br / 4 `st.shared.b32`). The accumulator's
/// element (nt, i) of lane l sits at row `8 (i / 2) + l / 4`, columns `8 nt + 2 (l % 4) +
/// i % 2` of the warp's 16 x Br part: the 8x8 matrix (half `i / 2`, group `nt`) in
/// stmatrix's non-transposed fragment order (row l / 4, columns 2 (l % 4), + 1; the low
/// column in the low half, as [`Gpu::pack2`] packs). Matrix m of instruction p is (half
/// m % 2, group 2p + m / 2), so register m is `pack2` of element pair `2 (m % 2)` of
/// group `2p + m / 2`; lane l gives row `l % 8` of matrix `l / 8`: tile row `16 warp +
/// 8 ((l / 8) % 2) + l % 8`, 16-byte chunk `(2p + l / 16) % 8` XOR the row's swizzle `l %
/// 8` in slab `2p / 8` ([`ds_stmatrix_lane_offset`], checked against the per-pair stores
/// for every lane and element in this module's tests). `ds` may be a part of the
/// accumulator: its n8 groups from `2 p0` (pairs `p0 ..`; [`PtxOptions::bwd_dv_chunks`]).
#[allow(clippy::too_many_arguments)]
fn store_ds_stmatrix<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    (t, t_off): (&SmemTile, IntValue<'ctx>),
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    ds: &Acc<'ctx>,
    p0: usize,
) -> R<()> {
    // lane l: row 16 warp + 8 ((l / 8) % 2) + l % 8; x = (l / 16) ^ (l % 8): the chunk of
    // pair p is (2p % 8) ^ x (2p even: 2p % 8 + l / 16 = (2p % 8) ^ (l / 16))
    let rr = g.and(lane, g.c32(7))?;
    let half = g.and(g.lshr(lane, g.c32(3))?, g.c32(1))?;
    let row = g.add(g.add(g.mul(warp, g.c32(16))?, g.mul(half, g.c32(8))?)?, rr)?;
    let x = g.xor(g.lshr(lane, g.c32(4))?, rr)?;
    let base = g.add(
        g.mul(row, g.c32(128))?,
        g.add(t_off, g.c32(t.offset as i64))?,
    )?;
    for (k, pair) in ds.chunks(2).enumerate() {
        let p = p0 + k;
        let (a, b) = (&pair[0], &pair[1]);
        let slab = (2 * p as u32 / 8) * t.rows * 128;
        let chunk = g.xor(g.c32((2 * p as i64) % 8), x)?;
        let off = g.add(g.add(base, g.c32(slab as i64))?, g.shl(chunk, g.c32(4))?)?;
        let r = pack_x4(g, o, a, b)?;
        g.stmatrix_x4(g.smem_at(off)?, r)?;
    }
    Ok(())
}

/// The four 16-bit-pair registers of one `stmatrix` x4 from two 4-element fragments
/// `a`, `b` (elements 0/1 and 2/3 of each packed in `o.input`).
fn pack_x4<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    a: &[FloatValue<'ctx>],
    b: &[FloatValue<'ctx>],
) -> R<[IntValue<'ctx>; 4]> {
    Ok([
        g.pack2(o.input, a[0], a[1])?,
        g.pack2(o.input, a[2], a[3])?,
        g.pack2(o.input, b[0], b[1])?,
        g.pack2(o.input, b[2], b[3])?,
    ])
}

/// The byte offset in the dSᵀ tile (slabs `rows * 128` bytes apart) that lane `lane` of
/// warp `warp` gives to the `p`-th `stmatrix` of [`store_ds_stmatrix`] (the same
/// arithmetic on integers, for the tests).
#[cfg(test)]
fn ds_stmatrix_lane_offset(warp: u32, lane: u32, p: u32, rows: u32) -> u32 {
    let rr = lane & 7;
    let row = 16 * warp + 8 * ((lane >> 3) & 1) + rr;
    let x = (lane >> 4) ^ rr;
    let chunk = ((2 * p) % 8) ^ x;
    row * 128 + (2 * p / 8) * rows * 128 + (chunk << 4)
}

/// The byte offset in the dSᵀ tile of [`store_ds`]'s per-pair store of element pair `hr`
/// (elements `2 hr`, `2 hr + 1`) of n8 group `nt` of lane `lane` of warp `warp` (the
/// default path's arithmetic on integers, for the tests).
#[cfg(test)]
fn ds_pair_offset(warp: u32, lane: u32, nt: u32, hr: u32, rows: u32) -> u32 {
    let row = 16 * warp + (lane >> 2) + 8 * hr;
    let chunk = (nt % 8) ^ (lane >> 2);
    row * 128 + (lane & 3) * 4 + (nt / 8) * rows * 128 + (chunk << 4)
}

/// [`frag_col_stat`] with [`PtxOptions::bwd_stmatrix`]: the same values, each pair of
/// adjacent columns (`cc` = 0, 1; 8-byte aligned: `2 (lane % 4)` is even and the rows,
/// buffers and their offsets are multiples of 8 bytes) with one `ld.shared.v2.f32`.
fn frag_col_stat_v2<'ctx>(
    g: &Gpu<'ctx>,
    lane: IntValue<'ctx>,
    br: u32,
    buf: IntValue<'ctx>,
    stat: u32,
) -> R<Vec<FloatValue<'ctx>>> {
    let col = g.mul(g.and(lane, g.c32(3))?, g.c32(2))?;
    let at0 = g.add(g.add(buf, g.mul(col, g.c32(4))?)?, g.c32(stat as i64))?;
    let mut out = Vec::new();
    for nt in 0..(br / 8) as usize {
        let [v0, v1] = g.ld_shared_v2(g.add(at0, g.c32(32 * nt as i64))?)?;
        out.extend([v0, v1]);
    }
    Ok(out)
}

/// [`frag_row_stats`] with [`PtxOptions::bwd_stmatrix`]: L2 and Delta through
/// [`frag_col_stat_v2`] (the same values and q columns).
#[allow(clippy::type_complexity)]
fn frag_row_stats_v2<'ctx>(
    g: &Gpu<'ctx>,
    c: &super::Common<'ctx>,
    t: &super::DkDvTiles,
    br: u32,
    (kv0, row0): (IntValue<'ctx>, IntValue<'ctx>),
    q0: IntValue<'ctx>,
    buf: IntValue<'ctx>,
) -> R<(
    IntValue<'ctx>,
    Vec<(
        IntValue<'ctx>,
        inkwell::values::BasicValueEnum<'ctx>,
        inkwell::values::BasicValueEnum<'ctx>,
    )>,
)> {
    let kv_row = g.add(g.add(kv0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
    let l2 = frag_col_stat_v2(g, c.lane, br, buf, t.l2)?;
    let dl = frag_col_stat_v2(g, c.lane, br, buf, t.delta)?;
    let col = g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?;
    let mut stats = Vec::new();
    for (k, (l, d)) in l2.iter().zip(&dl).enumerate() {
        let ci = g.add(col, g.c32(8 * (k / 2) as i64 + (k % 2) as i64))?;
        stats.push((
            g.add(q0, ci)?,
            l.as_basic_value_enum(),
            d.as_basic_value_enum(),
        ));
    }
    Ok((kv_row, stats))
}

/// Whether q tiles of 128 fit (D = Dv = 64, the TMA producer, kv tiles of 128): each math
/// warpgroup then computes dQ's rows `64 wg ..` over all D columns ([`m_split`]).
pub(super) fn q128_fits(o: &PtxOptions) -> bool {
    o.d == 64 && o.dv == 64 && o.kv_block == 128 && tma_producer(o) && o.mma == Mma::Wgmma
}

/// What q tiles of 80 need ([`q80_fits`]).
const Q80_NEEDS: &str = "the TMA producer, kv tiles of 128, not `overlap`, `bwd_pingpong`, `bwd_wg_dq`, `bwd_persist` or `bwd_two_writers`";

/// Whether these options run q tiles of 80 (FlashAttention-3 / -4's dense hdim-128 tile):
/// Sᵀ and dPᵀ `m64n80k16` (40 registers each), dV and dK from the P and dS fragments
/// (5 k-steps), dS stored un-transposed (q rows x kv columns, `stmatrix .trans`:
/// [`store_ds_q80`]) so that each math warpgroup computes `dQᵀ = Kᵀ dSᵀ` for its 64 of
/// D's rows ([`dqt_product`]: K's slab read M-major, dS K-major, 8 k-steps over the kv
/// tile), dQᵀ's fragments into one dQ slot ([`q80_slot_offset`]; 80 x 128 f32 = 40 KiB:
/// two slots do not fit next to 80-row Q/dO buffers) and the conversion transposes them
/// (`convert::convert_t_body`).
pub fn q80(o: &PtxOptions) -> bool {
    o.q_block == 80
}

/// Whether q tiles of 80 ([`q80`]) fit these options: D = Dv = 128, kv tiles of 128, the
/// TMA producer (OrderedBulk), none of `overlap`, `bwd_pingpong`, `bwd_wg_dq`,
/// `bwd_persist`, `bwd_two_writers` (their own product orders or slot counts).
pub fn q80_fits(o: &PtxOptions) -> bool {
    o.q_block == 80
        && o.d == 128
        && o.dv == 128
        && o.kv_block == 128
        && o.mma == Mma::Wgmma
        && tma_producer(o)
        && !o.overlap
        && !o.bwd_pingpong
        && !o.bwd_wg_dq
        && !o.bwd_persist
        && !o.bwd_two_writers
}

/// `BwdDq::OrderedBulk`: the dQ slots of these options ([`DQ_SLOTS`], one with q tiles of
/// 80).
pub fn dq_slots(o: &PtxOptions) -> u32 {
    if q80(o) { 1 } else { DQ_SLOTS }
}

/// q tiles of 80: the byte offset in the dQ slot (and the DqAccum tile) of lane `lane`'s
/// 16 bytes of n8 group `nt` of math warp `warp`'s dQᵀ accumulator (D rows `16 warp +
/// lane / 4`, `+ 8`; q columns `8 nt + 2 (lane % 4)`, `+ 1`): 512-byte fragment tiles
/// ordered by q group, then D group (`convert::convert_t_body` reads them).
pub fn q80_slot_offset(d: u32, warp: u32, lane: u32, nt: u32) -> u32 {
    ((nt * (d / 16) + warp) * 32 + lane) * 16
}

/// q tiles of 80: this warp's dSᵀ accumulator (kv rows `16 warp ..`, q columns `0..80`)
/// stored un-transposed into the dS tile `t` (q rows x kv columns, two 64-column slabs
/// `t.rows * 128` bytes apart, 128-byte swizzle), `t_off` bytes further: one
/// `stmatrix.trans` per pair `(2p, 2p + 1)` of n8 groups. Matrix m (half `m % 2`, group
/// `2p + m / 2`, registers as [`store_ds_stmatrix`]) is stored transposed: its memory row
/// j is q row `8 (2p + m / 2) + j`, 16 bytes at kv `16 warp + 8 (m % 2)` (slab `warp / 4`,
/// chunk `2 (warp % 4) + m % 2` XOR the row's swizzle `j`); lane l gives the address of
/// row `l % 8` of matrix `l / 8` ([`ds_q80_lane_offset`], checked in this module's tests).
fn store_ds_q80<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    (t, t_off): (&SmemTile, IntValue<'ctx>),
    warp: IntValue<'ctx>,
    lane: IntValue<'ctx>,
    ds: &Acc<'ctx>,
) -> R<()> {
    let j = g.and(lane, g.c32(7))?;
    let m = g.lshr(lane, g.c32(3))?;
    let hh = g.and(m, g.c32(1))?;
    let mhi = g.lshr(m, g.c32(1))?;
    let slab = g.mul(g.lshr(warp, g.c32(2))?, g.c32((t.rows * 128) as i64))?;
    let chunk = g.xor(g.add(g.mul(g.and(warp, g.c32(3))?, g.c32(2))?, hh)?, j)?;
    let row = g.add(g.mul(mhi, g.c32(8))?, j)?;
    let base = g.add(
        g.add(
            slab,
            g.add(g.mul(row, g.c32(128))?, g.shl(chunk, g.c32(4))?)?,
        )?,
        g.add(t_off, g.c32(t.offset as i64))?,
    )?;
    for (p, pair) in ds.chunks(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        let off = g.add(base, g.c32(p as i64 * 16 * 128))?;
        let r = pack_x4(g, o, a, b)?;
        g.stmatrix_x4_trans(g.smem_at(off)?, r)?;
    }
    Ok(())
}

/// The byte offset in the dS tile (slabs `rows * 128` bytes apart) that lane `lane` of
/// warp `warp` gives to the `p`-th `stmatrix.trans` of [`store_ds_q80`] (the same
/// arithmetic on integers, for the tests).
#[cfg(test)]
fn ds_q80_lane_offset(warp: u32, lane: u32, p: u32, rows: u32) -> u32 {
    let (j, m) = (lane & 7, lane >> 3);
    let chunk = (2 * (warp & 3) + (m & 1)) ^ j;
    (warp >> 2) * rows * 128 + (16 * p + 8 * (m >> 1) + j) * 128 + (chunk << 4)
}

/// q tiles of 80: issues this warpgroup's `dQᵀ = Kᵀ dSᵀ` (not committed): its 64 of D's
/// rows (A: K's 64-column slab `wg`, read M-major as `dq_chunk` reads dSᵀ), every q
/// column (B: the dS tile `ds_off` bytes further, q rows x kv columns, K-major as the Q
/// tile of Sᵀ), `kv_block / 16` k-steps over the kv tile; 40 registers per thread
/// (m16n8 order: D rows `16 warp + lane / 4`, q columns `8 nt + 2 (lane % 4)`).
fn dqt_product<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    (ds, ds_off): (&SmemTile, IntValue<'ctx>),
    k: &SmemTile,
    wg: IntValue<'ctx>,
) -> R<Vec<FloatValue<'ctx>>> {
    let a_base = g.smem_addr32(g.add(
        g.mul(wg, g.c32((k.rows * 128) as i64))?,
        g.c32(k.offset as i64),
    )?)?;
    let b_base = g.smem_addr32(g.add(ds_off, g.c32(ds.offset as i64))?)?;
    let mut acc: Option<Vec<FloatValue<'ctx>>> = None;
    let desc = Desc::of(o);
    let (la, lb) = if desc != Desc::Each {
        (
            Some(DescBase::new(g, desc, a_base, k.rows * 128)?),
            Some(DescBase::new(g, desc, b_base, 16)?),
        )
    } else {
        (None, None)
    };
    for ks in 0..o.kv_block / 16 {
        let (a_off, b_off) = (ks * 16 * 128, slab_kstep(ds, ks));
        let (da, db) = match (la, lb) {
            (Some(la), Some(lb)) => (la.at(g, a_off)?, lb.at(g, b_off)?),
            _ => (
                g.wgmma_desc(g.add(a_base, g.c32(a_off as i64))?, k.rows * 128, 1024)?,
                g.wgmma_desc(g.add(b_base, g.c32(b_off as i64))?, 16, 1024)?,
            ),
        };
        acc = Some(g.wgmma_t(
            o.input,
            ds.rows,
            WgmmaA::Desc(da),
            true,
            db,
            false,
            acc.as_deref(),
        )?);
    }
    acc.ok_or(LlvmError::Internal("empty dQ product"))
}

/// Whether the math warpgroups split dQ's rows (q tiles of 128: warpgroup w computes q
/// rows `64 w ..`, every column) instead of its columns (q tiles of 64).
fn m_split(o: &PtxOptions) -> bool {
    o.q_block == 128
}

/// Columns of dQ per `dS K` product of one warpgroup: 64, or 32 where the warpgroups
/// share fewer than 64 columns each (D64 with two math warpgroups and q tiles of 64).
fn dq_chunk_cols(o: &PtxOptions) -> u32 {
    if m_split(o) || o.bwd_wg_dq {
        o.d.min(64)
    } else {
        (o.d / (o.kv_block / 64)).min(64)
    }
}

/// Issues this warpgroup's `dS K` for dQ columns `col0 .. col0 + n` (`n` =
/// [`dq_chunk_cols`], not committed): A the dSᵀ tile (`ds_off` bytes further) read
/// M-major, B the K tile read N-major (its 64-column slab `col0 / 64`; 32 columns start
/// `2 (col0 % 64)` bytes into the slab's 128-byte rows: the swizzle applies to the
/// address, so the descriptor starts inside the swizzle atom, as a K-major one advances
/// along K). `rows` ([`PtxOptions::bwd_wg_dq`]): only the 64 kv rows from this
/// (register) row, this warpgroup's, instead of the whole kv tile.
fn dq_chunk<'ctx>(
    g: &Gpu<'ctx>,
    o: &PtxOptions,
    (ds, ds_off): (&SmemTile, IntValue<'ctx>),
    k: &SmemTile,
    col0: IntValue<'ctx>,
    rows: Option<IntValue<'ctx>>,
) -> R<Vec<inkwell::values::FloatValue<'ctx>>> {
    let n = dq_chunk_cols(o);
    let mut a_base = g.smem_addr32(g.add(ds_off, g.c32(ds.offset as i64))?)?;
    let mut slab = g.mul(g.lshr(col0, g.c32(6))?, g.c32(k.rows as i64 * 128))?;
    if n < 64 {
        slab = g.add(slab, g.mul(g.and(col0, g.c32(63))?, g.c32(2))?)?;
    }
    let mut b_base = g.smem_addr32(g.add(slab, g.c32(k.offset as i64))?)?;
    // `bwd_wg_dq`: only the 64 kv rows from `first` (a multiple of 64): 4 steps of 16
    let steps = match rows {
        Some(first) => {
            let off = g.mul(first, g.c32(128))?;
            a_base = g.add(a_base, off)?;
            b_base = g.add(b_base, off)?;
            4
        }
        None => o.kv_block / 16,
    };
    let mut acc: Option<Vec<_>> = None;
    let desc = Desc::of(o);
    if desc != Desc::Each {
        // one base descriptor per operand, a constant per k-step
        let la = DescBase::new(g, desc, a_base, ds.rows * 128)?;
        let lb = DescBase::new(g, desc, b_base, k.rows * 128)?;
        for kk in 0..steps {
            let da = la.at(g, kk * 16 * 128)?;
            let db = lb.at(g, kk * 16 * 128)?;
            acc = Some(g.wgmma_t(o.input, n, WgmmaA::Desc(da), true, db, true, acc.as_deref())?);
        }
        return acc.ok_or(LlvmError::Internal("empty dQ product"));
    }
    for kk in 0..steps {
        let step = g.c32(kk as i64 * 16 * 128);
        let da = g.wgmma_desc(g.add(a_base, step)?, ds.rows * 128, 1024)?;
        let db = g.wgmma_desc(g.add(b_base, step)?, k.rows * 128, 1024)?;
        acc = Some(g.wgmma_t(o.input, n, WgmmaA::Desc(da), true, db, true, acc.as_deref())?);
    }
    acc.ok_or(LlvmError::Internal("empty dQ product"))
}

/// The fused dK/dV + dQ kernel (module docs).
pub(super) fn dkdv_dq_body<'ctx>(
    g: &Gpu<'ctx>,
    p: &Program,
    sd: Option<&(Function, Function)>,
    opts: &PtxOptions,
    kvb: &KvBounds,
    a: &Args<'_, 'ctx>,
) -> R<()> {
    let t = DkDvTiles::new(opts);
    let ds_t = t.ds.ok_or(LlvmError::Internal("dS tile"))?;
    let (br, bc) = (opts.q_block, opts.kv_block);
    let threads = bc / 16 * 32;
    let n_wg = bc / 64;
    let ty = opts.input;
    let ordered = opts.bwd_dq == BwdDq::Ordered;
    // products issued as soon as their operands exist (module docs)
    let early = opts.overlap;
    // OrderedBulk: one writer thread per dQ slot (`overlap` or `bwd_two_writers`)
    let two_writers = early || opts.bwd_two_writers;
    // bwd_pdl: the dQ conversion may start under this grid's tail (it waits for the sums:
    // the whole grid, or with bwd_convert_early its tile's last addition), and this grid
    // waits for the pre kernel (Delta, L2) after its prologue
    let pdl = super::pdl(opts);
    let conv_early = super::convert_early(opts);
    if pdl {
        g.griddep_launch_dependents()?;
    }
    let c = common(g, p, opts, a)?;
    let zero = g.c32(0);
    let one = g.c32(1);
    // bwd_desc: descriptors from one base per tile, the warpgroup index warp-uniform
    // (through shfl.sync, here where every thread of the CTA runs)
    let dsc = Desc::of(opts);
    let wg_uniform = if dsc != Desc::Each {
        Some(g.shfl_idx_i32(g.lshr(c.warp, g.c32(2))?, zero)?)
    } else {
        None
    };
    // bwd_lpt: the grid is (kv head, kv block, batch), kv blocks in ascending order;
    // bwd_doc_tiles takes its ranks and visit order (its entries in ascending order: each
    // document's heaviest tile first, a document's tiles after the one before it, whose
    // last q block they share)
    let lpt = opts.bwd_lpt || opts.bwd_doc_tiles;
    let hk = g.ctaid(if lpt { 'x' } else { 'y' })?;
    let nkv = g.udiv(g.add(c.lkv, g.c32(bc as i64 - 1))?, g.c32(bc as i64))?;
    let nq = g.udiv(g.add(c.lq, g.c32(br as i64 - 1))?, g.c32(br as i64))?;
    // x = 0 is the last kv block: it adds first (module docs); bwd_lpt: y = kv block,
    // the first block of a q block's range adds first
    let jb = if lpt {
        g.ctaid('y')?
    } else {
        g.sub(g.sub(nkv, one)?, g.ctaid('x')?)?
    };
    // a visit's rank in its dQ tile's addition order
    let rank_of =
        |tl: &Tile<'ctx>, first: IntValue<'ctx>, end: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            if lpt {
                g.sub(tl.jb, first)
            } else {
                g.sub(g.sub(end, one)?, tl.jb)
            }
        };
    // the visit order: q blocks ascending, or with bwd_lpt descending (each q block's
    // first kv block, which adds first there, is its longest CTA: the CTAs of one q
    // block reach it at the same visit count and follow each other one addition apart)
    let q_start = if lpt { g.sub(nq, one)? } else { zero };
    let q_step = |qb: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        if lpt { g.sub(qb, one) } else { g.add(qb, one) }
    };
    let kv0 = g.mul(jb, g.c32(bc as i64))?;
    let group = g.udiv(c.hq, c.hkv)?;
    let kbase = slice_base(g, a.ptr(KernelParam::K)?, c.b, c.hkv, hk, c.lkv, opts.d)?;
    let vbase = slice_base(g, a.ptr(KernelParam::V)?, c.b, c.hkv, hk, c.lkv, opts.dv)?;
    let kv_tail = g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(bc as i64))?, c.lkv)?;
    // the CTA's kv tile (one per CTA; bwd_persist: each of its tiles in turn)
    let top = Tile {
        b: c.b,
        hk,
        jb,
        kv0,
        row_end: c.lkv,
        kbase,
        vbase,
        kv_tail,
    };
    // bwd_persist: the kv tiles (kv block, kv head, batch), in the order of the grid
    // without it (x fastest: kv blocks descending, or with bwd_lpt kv heads, then kv
    // blocks ascending)
    let persist = opts.bwd_persist;
    // bwd_doc_tiles: the list's entries in ascending order, the kv heads innermost (the
    // ranks count up, as bwd_lpt's kv blocks')
    let docs = opts.bwd_doc_tiles;
    let n_docs = if docs {
        Some(a.int(KernelParam::NumDocTiles)?)
    } else {
        None
    };
    let ntiles = match (persist, n_docs) {
        (true, Some(n)) => Some(g.mul(n, c.hkv)?),
        (true, None) => {
            let per_b = g.mul(nkv, c.hkv)?;
            Some(g.mul(per_b, a.int(KernelParam::Batch)?)?)
        }
        (false, _) => None,
    };
    let tile_at = |t: IntValue<'ctx>| -> R<Tile<'ctx>> {
        if n_docs.is_some() {
            // entry e = (b, row0, rows, kj): kv rows row0 + kj Bc .. of the document
            // row0 .. row0 + rows (the kernel's safety invariant: each entry inside its
            // sequence, as `Bound::block_mask_tables` makes them for the launch's shape)
            let e = g.udiv(t, c.hkv)?;
            let hk = g.urem(t, c.hkv)?;
            let list = a.ptr(KernelParam::DocTiles)?;
            let at = g.mul(g.zext64(e)?, g.c64(4))?;
            let word = |i: i64| g.load_i32(list, g.add(at, g.c64(i))?);
            let (b, row0, rows, kj) = (word(0)?, word(1)?, word(2)?, word(3)?);
            let kv0 = g.add(row0, g.mul(kj, g.c32(bc as i64))?)?;
            let row_end = g.add(row0, rows)?;
            return Ok(Tile {
                b,
                hk,
                jb: e,
                kv0,
                row_end,
                kbase: slice_base(g, a.ptr(KernelParam::K)?, b, c.hkv, hk, c.lkv, opts.d)?,
                vbase: slice_base(g, a.ptr(KernelParam::V)?, b, c.hkv, hk, c.lkv, opts.dv)?,
                kv_tail: g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(bc as i64))?, row_end)?,
            });
        }
        let (hk, jb, b) = if lpt {
            let r = g.udiv(t, c.hkv)?;
            (g.urem(t, c.hkv)?, g.urem(r, nkv)?, g.udiv(r, nkv)?)
        } else {
            let r = g.udiv(t, nkv)?;
            let jb = g.sub(g.sub(nkv, one)?, g.urem(t, nkv)?)?;
            (g.urem(r, c.hkv)?, jb, g.udiv(r, c.hkv)?)
        };
        let kv0 = g.mul(jb, g.c32(bc as i64))?;
        Ok(Tile {
            b,
            hk,
            jb,
            kv0,
            row_end: c.lkv,
            kbase: slice_base(g, a.ptr(KernelParam::K)?, b, c.hkv, hk, c.lkv, opts.d)?,
            vbase: slice_base(g, a.ptr(KernelParam::V)?, b, c.hkv, hk, c.lkv, opts.dv)?,
            kv_tail: g.icmp(IntPredicate::SGT, g.add(kv0, g.c32(bc as i64))?, c.lkv)?,
        })
    };
    // bwd_persist_dyn: each CTA's first tile is ctaid.x, every next one nctaid.x plus
    // the counter's old value (`DqSem[tiles + DQ_TILE_COUNTER]`, zeroed with the
    // semaphores), taken by the producer warp and handed to the math and writer warps
    // through the tile ring: id k % 2 in its (k / 2)-th phase, `full` (the producer's
    // lane 0) and `empty` (every math thread and writer thread that walks the tiles)
    let dyn_tiles = super::persist_dyn(opts);
    let ring = t.tile_ring.unwrap_or(0);
    let ring_at = |k: IntValue<'ctx>, off: u32, stride: u32| -> R<IntValue<'ctx>> {
        g.smem_addr32(g.add(
            g.c32((ring + off) as i64),
            g.mul(g.and(k, one)?, g.c32(stride as i64))?,
        )?)
    };
    let ring_id = |k| ring_at(k, 0, 4);
    let ring_full = |k| ring_at(k, 8, 8);
    let ring_empty = |k| ring_at(k, 24, 8);
    let ring_phase = |k: IntValue<'ctx>| g.and(g.lshr(k, one)?, one);
    let batches = || -> R<IntValue<'ctx>> {
        if persist {
            a.int(KernelParam::Batch)
        } else {
            g.nctaid('z')
        }
    };
    // a consumer's next tile id (the k-th handed over; `kv` counts them)
    let read_tile = |kv: &Var<'ctx>| -> R<IntValue<'ctx>> {
        let k = g.geti(kv)?;
        g.mbar_wait(ring_full(k)?, ring_phase(k)?)?;
        let id = g.ld_shared_u32(ring_id(k)?)?;
        g.mbar_arrive(ring_empty(k)?)?;
        g.set(kv, g.add(k, one)?)?;
        Ok(id)
    };
    // the producer warp's next tile: lane 0 takes it from the counter and hands it over
    let take_tile = |kv: &Var<'ctx>, lane: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        let k = g.geti(kv)?;
        let word = g.add(
            g.mul(g.mul(batches()?, c.hq)?, nq)?,
            g.c32(super::DQ_TILE_COUNTER as i64),
        )?;
        let ctr = addr_of(
            g,
            a.ptr(KernelParam::DqSem)?,
            g.mul(g.zext64(word)?, g.c64(4))?,
        )?;
        let old = g.atom_inc_relaxed_if_zero(lane, ctr)?;
        let id = g.add(g.shfl_idx_i32(old, zero)?, g.nctaid('x')?)?;
        g.mbar_wait(ring_empty(k)?, g.xor(ring_phase(k)?, one)?)?;
        g.if_then(g.icmp(IntPredicate::EQ, lane, zero)?, || {
            g.st_shared_u32(ring_id(k)?, id)?;
            g.mbar_arrive(ring_full(k)?)
        })?;
        g.set(kv, g.add(k, one)?)?;
        Ok(id)
    };
    // runs `body` for each of the CTA's kv tiles (bwd_persist: a loop over them; with
    // bwd_persist_dyn `producer` is the producer warp's lane, which takes the tiles, and
    // `after` runs after each tile's body)
    let for_tiles = |producer: Option<IntValue<'ctx>>,
                     body: &dyn Fn(&Tile<'ctx>) -> R<()>,
                     after: &dyn Fn() -> R<()>|
     -> R<()> {
        let Some(nt) = ntiles else {
            body(&top)?;
            return after();
        };
        let tv = g.var(g.i32, g.ctaid('x')?)?;
        let kv = if dyn_tiles {
            Some(g.var(g.i32, zero)?)
        } else {
            None
        };
        let head = g.block("tiles_head");
        let work = g.block("tiles_work");
        let done = g.block("tiles_done");
        g.br(head)?;
        g.b.position_at_end(head);
        let tn = g.geti(&tv)?;
        g.cond_br(g.icmp(IntPredicate::ULT, tn, nt)?, work, done)?;
        g.b.position_at_end(work);
        body(&tile_at(tn)?)?;
        after()?;
        let next = match (&kv, producer) {
            (None, _) => g.add(tn, g.nctaid('x')?)?,
            (Some(kv), Some(lane)) => take_tile(kv, lane)?,
            (Some(kv), None) => read_tile(kv)?,
        };
        g.set(&tv, next)?;
        g.br(head)?;
        g.b.position_at_end(done);
        Ok(())
    };
    let accum = a.ptr(KernelParam::DqAccum)?;
    let sem = a.ptr(KernelParam::DqSem)?;
    let tile_bytes = br * opts.d * 4;
    let bulk = opts.bwd_dq == BwdDq::OrderedBulk;
    // bwd_dq_free: the writer adds without waiting for the tile's turn (not deterministic)
    let free = bulk && opts.bwd_dq_free;
    // the math warps' barrier (with a writer warpgroup, a named one of theirs)
    let bar = || -> R<()> {
        if bulk {
            g.bar_sync(BAR_MATH, threads)
        } else {
            g.barrier()
        }
    };

    // bwd_wscan: a warp tests 32 q blocks per step (every lane of the warp takes part)
    let wscan = opts.bwd_wscan;
    // the kv blocks [first, end) (and the full run [ff, fe)) of q block `qb` of query head
    // `hi` of the group, first and end clamped into [0, nkv): the kv blocks that add into
    // that tile are exactly the CTAs in [first, end), and the ranks count down from
    // end - 1 (a rank past the last CTA would wait forever)
    let visit_range =
        |tl: &Tile<'ctx>, hi: IntValue<'ctx>, qb: IntValue<'ctx>| -> R<[IntValue<'ctx>; 4]> {
            let h = g.add(g.mul(tl.hk, group)?, hi)?;
            let q0 = g.mul(qb, g.c32(br as i64))?;
            let [first, end, ff, fe] =
                blocks(g, p, kvb, a, false, (tl.b, h), q0, br, c.lq, c.lkv, bc)?;
            // (bwd_doc_tiles: entries of the list)
            let last = n_docs.unwrap_or(nkv);
            let first = g.selecti(g.icmp(IntPredicate::SLT, first, zero)?, zero, first)?;
            let end = g.selecti(g.icmp(IntPredicate::SGT, end, last)?, last, end)?;
            Ok([first, end, ff, fe])
        };
    // the loop both scans walk (blocks named `{name}_*`): from (hi0, qb0) every q block of
    // every query head in the visit order, `out.found` false until a hit. Leaves the
    // builder in the loop's body at an in-range q block (qb >= 0 with bwd_lpt, else
    // `below(qb, nq)`); the caller's body moves `s_qb` on and branches to `hit` or back
    // to `head`, and its `hit` ends in `scan_found`.
    let scan_loop = |name: &str,
                     below: IntPredicate,
                     hi0: IntValue<'ctx>,
                     qb0: IntValue<'ctx>,
                     out: &Visit<'ctx>|
     -> R<ScanLoop<'ctx>> {
        let (s_hi, s_qb) = (g.var(g.i32, hi0)?, g.var(g.i32, qb0)?);
        g.set(&out.found, g.cbool(false))?;
        let block = |part: &str| g.block(&format!("{name}_{part}"));
        let head = block("head");
        let check = block("qblock");
        let next_head = block("next_head");
        let body = block("range");
        let hit = block("hit");
        let done = block("done");
        g.br(head)?;
        g.b.position_at_end(head);
        let hi = g.geti(&s_hi)?;
        g.cond_br(g.icmp(IntPredicate::ULT, hi, group)?, check, done)?;
        g.b.position_at_end(check);
        let qb = g.geti(&s_qb)?;
        let in_range = if lpt {
            g.icmp(IntPredicate::SGE, qb, zero)?
        } else {
            g.icmp(below, qb, nq)?
        };
        g.cond_br(in_range, body, next_head)?;
        g.b.position_at_end(next_head);
        g.set(&s_hi, g.add(hi, one)?)?;
        g.set(&s_qb, q_start)?;
        g.br(head)?;
        g.b.position_at_end(body);
        Ok(ScanLoop {
            hi,
            qb,
            s_qb,
            head,
            hit,
            done,
        })
    };
    // a scan's hit block (its outputs set): found, and the scan is done
    let scan_found = |l: &ScanLoop<'ctx>, out: &Visit<'ctx>| -> R<()> {
        g.set(&out.found, g.cbool(true))?;
        g.br(l.done)?;
        g.b.position_at_end(l.done);
        Ok(())
    };
    // the next visit at or after (hi0, qb0): every q block of every query head in order,
    // kept where its kv range holds this block
    let scan_one =
        |tl: &Tile<'ctx>, hi0: IntValue<'ctx>, qb0: IntValue<'ctx>, out: &Visit<'ctx>| -> R<()> {
            let l = scan_loop("scan", IntPredicate::ULT, hi0, qb0, out)?;
            let (hi, qb) = (l.hi, l.qb);
            let [first, end, ff, fe] = visit_range(tl, hi, qb)?;
            for (v, x) in [
                (&out.hi, hi),
                (&out.qb, qb),
                (&out.first, first),
                (&out.end, end),
                (&out.ff, ff),
                (&out.fe, fe),
            ] {
                g.set(v, x)?;
            }
            g.set(&l.s_qb, q_step(qb)?)?;
            let visit = g.and(
                g.icmp(IntPredicate::SLE, first, tl.jb)?,
                g.icmp(IntPredicate::SLT, tl.jb, end)?,
            )?;
            g.cond_br(visit, l.hit, l.head)?;
            g.b.position_at_end(l.hit);
            scan_found(&l, out)
        };
    // bwd_wscan: lane l tests q block qb + l (bwd_lpt: qb - l) of the same head; the lowest
    // lane with a hit is the next visit in the order (its range shuffled from that lane);
    // without one the warp moves 32 q blocks on. The lanes past the last q block test
    // the warp's first (valid) q block and never hit.
    let scan_warp =
        |tl: &Tile<'ctx>, hi0: IntValue<'ctx>, qb0: IntValue<'ctx>, out: &Visit<'ctx>| -> R<()> {
            let lane = g.and(c.tid, g.c32(31))?;
            let l = scan_loop("wscan", IntPredicate::SLT, hi0, qb0, out)?;
            let (hi, qb) = (l.hi, l.qb);
            let (mine, ok) = if lpt {
                let m = g.sub(qb, lane)?;
                (m, g.icmp(IntPredicate::SGE, m, zero)?)
            } else {
                let m = g.add(qb, lane)?;
                (m, g.icmp(IntPredicate::SLT, m, nq)?)
            };
            let mine = g.selecti(ok, mine, qb)?;
            let [first, end, ff, fe] = visit_range(tl, hi, mine)?;
            let visit = g.and(
                ok,
                g.and(
                    g.icmp(IntPredicate::SLE, first, tl.jb)?,
                    g.icmp(IntPredicate::SLT, tl.jb, end)?,
                )?,
            )?;
            let ballot = warp_ballot(g, visit)?;
            g.set(
                &l.s_qb,
                if lpt {
                    g.sub(qb, g.c32(32))?
                } else {
                    g.add(qb, g.c32(32))?
                },
            )?;
            g.cond_br(g.icmp(IntPredicate::NE, ballot, zero)?, l.hit, l.head)?;
            g.b.position_at_end(l.hit);
            let src = count_trailing_zeros(g, ballot, true)?;
            let qhit = if lpt {
                g.sub(qb, src)?
            } else {
                g.add(qb, src)?
            };
            for (v, x) in [
                (&out.hi, hi),
                (&out.qb, qhit),
                (&out.first, g.shfl_idx_i32(first, src)?),
                (&out.end, g.shfl_idx_i32(end, src)?),
                (&out.ff, g.shfl_idx_i32(ff, src)?),
                (&out.fe, g.shfl_idx_i32(fe, src)?),
            ] {
                g.set(v, x)?;
            }
            scan_found(&l, out)
        };
    let scan =
        |tl: &Tile<'ctx>, hi0: IntValue<'ctx>, qb0: IntValue<'ctx>, out: &Visit<'ctx>| -> R<()> {
            if wscan {
                scan_warp(tl, hi0, qb0, out)
            } else {
                scan_one(tl, hi0, qb0, out)
            }
        };

    let row_stats = (a.ptr(KernelParam::Lse2)?, a.ptr(KernelParam::Delta)?);
    let load_q = |h: IntValue<'ctx>, qb: IntValue<'ctx>, buf: IntValue<'ctx>| {
        load_q_block(g, a, &c, &t, opts, row_stats, threads, (h, qb), buf)
    };
    let head_of = |tl: &Tile<'ctx>, v: &Visit<'ctx>| -> R<IntValue<'ctx>> {
        g.add(g.mul(tl.hk, group)?, g.geti(&v.hi)?)
    };

    let is_t0 = g.icmp(IntPredicate::EQ, c.tid, zero)?;
    // OrderedBulk: the dQ slots and their mbarriers (full: the math warps wrote the part;
    // empty: the writer's bulk copy has read it)
    let (slots, bars) = t.dq_slots.unwrap_or((0, 0));
    let slot_bar = |first: u32, s: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.smem_addr32(g.add(g.c32((bars + 8 * first) as i64), g.mul(s, g.c32(8))?)?)
    };
    // (q tiles of 80: one slot)
    let nslots = dq_slots(opts);
    let bar_full = |s| slot_bar(0, s);
    let bar_empty = |s| slot_bar(nslots, s);
    // bwd_wg_dq: warpgroup 1 has stored its part of dQ into the slot
    let bar_half = |s| slot_bar(2 * nslots, s);
    let wg_dq = opts.bwd_wg_dq;
    // visit n uses slot n % nslots in its (n / nslots)-th phase
    let slot_of = |n: IntValue<'ctx>| -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        let sl = g.and(n, g.c32(nslots as i64 - 1))?;
        let ph = g.lshr(n, g.c32(nslots.trailing_zeros() as i64))?;
        Ok((sl, g.and(ph, one)?))
    };
    let slot_addr = |sl: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.add(g.c32(slots as i64), g.mul(sl, g.c32(tile_bytes as i64))?)
    };
    // bwd_tma: the (Q, dO, L2, Delta) buffers' mbarriers (full: the producer warp's 32
    // arrivals and the TMA bytes; empty: every math thread has done with the buffer)
    let tma = tma_producer(opts);
    let qbars = t.q_bars.unwrap_or(0);
    let q_bar = |which: u32, s: IntValue<'ctx>| -> R<IntValue<'ctx>> {
        g.smem_addr32(g.add(g.c32((qbars + 16 * which) as i64), g.mul(s, g.c32(8))?)?)
    };
    let q_full = |s| q_bar(0, s);
    let q_empty = |s| q_bar(1, s);
    if bulk {
        g.if_then(is_t0, || {
            for sl in 0..nslots {
                // bwd_wg_dq: warpgroup 0 alone fills the slot (after warpgroup 1's `half`)
                g.mbar_init(
                    bar_full(g.c32(sl as i64))?,
                    if wg_dq { 128 } else { threads },
                )?;
                g.mbar_init(bar_empty(g.c32(sl as i64))?, 1)?;
                if wg_dq {
                    g.mbar_init(bar_half(g.c32(sl as i64))?, 128)?;
                }
            }
            if tma {
                for sl in 0..2 {
                    g.mbar_init(q_full(g.c32(sl))?, 32)?;
                    g.mbar_init(q_empty(g.c32(sl))?, threads)?;
                }
            }
            if dyn_tiles {
                // empty: every math thread and every writer thread that walks the tiles
                let walkers = match (two_writers, wscan) {
                    (true, true) => 64,
                    (true, false) => 2,
                    (false, true) => 32,
                    (false, false) => 1,
                };
                for k in 0..2 {
                    g.mbar_init(ring_full(g.c32(k))?, 1)?;
                    g.mbar_init(ring_empty(g.c32(k))?, threads + walkers)?;
                }
            }
            g.fence_mbar_init()
        })?;
        g.barrier()?;
        let writer_bb = g.block("dq_writer");
        let math_bb = g.block("math");
        g.cond_br(
            g.icmp(IntPredicate::UGE, c.tid, g.c32(threads as i64))?,
            writer_bb,
            math_bb,
        )?;
        // ---- the writer warpgroup: one thread adds every visit's dQ part in turn (early:
        // one thread per slot, lane 0 of the writer warpgroup's warp `slot`, each adding
        // the visits of its slot, so that two additions can be under way) ----
        g.b.position_at_end(writer_bb);
        g.setmaxnreg(false, register_split(opts).0)?;
        if pdl {
            g.griddep_wait()?;
        }
        let wt = g.sub(c.tid, g.c32(threads as i64))?;
        let writer_slot = g.lshr(wt, g.c32(5))?;
        if tma {
            let is_producer = g.icmp(IntPredicate::EQ, writer_slot, g.c32(PRODUCER_WARP as i64))?;
            g.if_then(is_producer, || {
                let lane = g.and(wt, g.c32(31))?;
                let (pv, pn) = (Visit::new(g)?, g.var(g.i32, zero)?);
                for_tiles(
                    Some(lane),
                    &|tl| {
                        let scan_t = |h, q, v: &Visit<'ctx>| scan(tl, h, q, v);
                        let walk = (
                            &scan_t as Scan<'_, 'ctx>,
                            q_start,
                            &q_step as &dyn Fn(_) -> _,
                        );
                        produce(
                            g,
                            &c,
                            &t,
                            opts,
                            a,
                            walk,
                            (tl.b, &|v: &Visit<'ctx>| head_of(tl, v)),
                            (&q_full, &q_empty),
                            (lane, &pv, &pn),
                        )
                    },
                    &|| Ok(()),
                )
            })?;
        }
        // bwd_wscan: the writer warp(s) search together, lane 0 adds
        let w_lane0 = g.icmp(IntPredicate::EQ, g.and(wt, g.c32(31))?, zero)?;
        let is_writer = if two_writers {
            let w = g.icmp(IntPredicate::ULT, writer_slot, g.c32(nslots as i64))?;
            if wscan { w } else { g.and(w_lane0, w)? }
        } else if wscan {
            g.icmp(IntPredicate::EQ, writer_slot, zero)?
        } else {
            g.icmp(IntPredicate::EQ, c.tid, g.c32(threads as i64))?
        };
        g.if_then(is_writer, || {
            let wv = Visit::new(g)?;
            let wn = g.var(g.i32, zero)?;
            // bwd_convert_early: this writer is done (every addition of its released); the
            // word after the tiles' semaphores counts the grid's writers (persistent CTAs:
            // once per tile, the same count)
            let adder = if wscan { w_lane0 } else { g.cbool(true) };
            let count_done = || -> R<()> {
                if !conv_early {
                    return Ok(());
                }
                g.if_then(adder, || {
                    let tiles = g.mul(g.mul(batches()?, c.hq)?, nq)?;
                    g.release_inc(addr_of(g, sem, g.mul(g.zext64(tiles)?, g.c64(4))?)?)
                })
            };
            let per_tile = || if persist { count_done() } else { Ok(()) };
            for_tiles(
                None,
                &|tl| {
                    scan(tl, zero, q_start, &wv)?;
                    let head = g.block("writer_head");
                    let body = g.block("writer_tile");
                    let done = g.block("writer_done");
                    g.br(head)?;
                    g.b.position_at_end(head);
                    g.cond_br(g.geti(&wv.found)?, body, done)?;
                    g.b.position_at_end(body);
                    let n = g.geti(&wn)?;
                    let (sl, ph) = slot_of(n)?;
                    let add_tile = || -> R<()> {
                        g.mbar_wait(bar_full(sl)?, ph)?;
                        let h = head_of(tl, &wv)?;
                        let qb = g.geti(&wv.qb)?;
                        let tile = g.add(g.mul(g.add(g.mul(tl.b, c.hq)?, h)?, nq)?, qb)?;
                        let sem_addr = addr_of(g, sem, g.mul(g.zext64(tile)?, g.c64(4))?)?;
                        if free {
                            // bwd_dq_free: no turn to wait for; DqAccum was zeroed, every part adds
                            let dst = addr_of(
                                g,
                                accum,
                                tile_offset(g, (tl.b, c.hq, h), nq, qb, tile_bytes)?,
                            )?;
                            let src = g.smem_addr32(slot_addr(sl)?)?;
                            g.bulk_store_or_add_f32(dst, src, tile_bytes, zero)?;
                            g.bulk_wait(true, 0)?;
                            return g.mbar_arrive(bar_empty(sl)?);
                        }
                        // descending kv blocks, as Ordered
                        let rank = rank_of(tl, g.geti(&wv.first)?, g.geti(&wv.end)?)?;
                        g.spin_until_eq(sem_addr, rank)?;
                        g.fence_proxy_async_global()?;
                        let dst = addr_of(
                            g,
                            accum,
                            tile_offset(g, (tl.b, c.hq, h), nq, qb, tile_bytes)?,
                        )?;
                        let src = g.smem_addr32(slot_addr(sl)?)?;
                        let store = g.b.build_int_z_extend(
                            g.icmp(IntPredicate::EQ, rank, zero)?,
                            g.i32,
                            "",
                        )?;
                        // the first adder stores: DqAccum needs no zeroing
                        g.bulk_store_or_add_f32(dst, src, tile_bytes, store)?;
                        g.bulk_wait(true, 0)?;
                        g.mbar_arrive(bar_empty(sl)?)?;
                        // the addition done (its writes performed), the next kv block's turn
                        g.bulk_wait(false, 0)?;
                        g.fence_proxy_async_global()?;
                        if conv_early {
                            // bwd_convert_early: the last adder flags the tile for its conversion
                            let last = g.sub(g.sub(g.geti(&wv.end)?, g.geti(&wv.first)?)?, one)?;
                            let flag = g.selecti(
                                g.icmp(IntPredicate::EQ, rank, last)?,
                                g.c32(super::DQ_DONE_FLAG as i64),
                                zero,
                            )?;
                            return g.release_add(sem_addr, g.or(flag, one)?);
                        }
                        g.release_inc(sem_addr)
                    };
                    let mine = if two_writers {
                        g.icmp(IntPredicate::EQ, sl, writer_slot)?
                    } else {
                        g.cbool(true)
                    };
                    let mine = if wscan { g.and(mine, w_lane0)? } else { mine };
                    if two_writers || wscan {
                        g.if_then(mine, add_tile)?;
                    } else {
                        add_tile()?;
                    }
                    g.set(&wn, g.add(n, one)?)?;
                    scan(tl, g.geti(&wv.hi)?, q_step(g.geti(&wv.qb)?)?, &wv)?;
                    g.br(head)?;
                    g.b.position_at_end(done);
                    Ok(())
                },
                &per_tile,
            )?;
            if free {
                // the unordered additions' writes, done before the CTA ends
                g.bulk_wait(false, 0)?;
            }
            if !persist {
                count_done()?;
            }
            Ok(())
        })?;
        g.b.build_return(None)?;
        // ---- the math warpgroups ----
        g.b.position_at_end(math_bb);
        g.setmaxnreg(true, register_split(opts).1)?;
    }
    let mn = g.var(g.i32, zero)?;
    // bwd_persist_dyn with visit records: each tile's end record takes a ring buffer of
    // its own (given back at once), so the ring's index is the visits plus the ends
    // (counted over the CTA's tiles: made here, before the tile loop)
    let ends = if persist && t.visit_rec.is_some() {
        Some(g.var(g.i32, zero)?)
    } else {
        None
    };

    let dk = acc_vars(g, (opts.d / 8) as usize)?;
    let dv = acc_vars(g, (opts.dv / 8) as usize)?;
    let sg = (!capture_grads(p).is_empty()).then(|| crate::grad::differentiate(p));
    let cap = match &sg {
        Some(sg) => Some(CapCtx::new(g, sg, p, a)?),
        None => None,
    };
    let cur = Visit::new(g)?;
    let nxt = Visit::new(g)?;
    // bwd_pingpong: the math warpgroups take turns in the element code; a visit's Sᵀ and
    // dPᵀ are issued and completed at the end of the visit before (kept here), its dQ
    // part computed in the visit after (not with capture gradients: their P and dS come
    // from one pass with the gradients' sums; the option is ignored there)
    // (nor with `overlap`, `bwd_wg_dq`, `bwd_persist` or without the TMA producer: their
    // own orders; ignored there too)
    let pingpong = opts.bwd_pingpong
        && cap.is_none()
        && tma
        && n_wg == 2
        && !early
        && !opts.bwd_wg_dq
        && !opts.bwd_persist;
    let pipe = pingpong;
    // bwd_ping_next: the next visit's Sᵀ and dPᵀ under the last visit's dQ part (turns only)
    let ping_next = pipe && opts.bwd_ping_next;
    let (sv, dpv) = if pipe {
        let n = (br / 8) as usize;
        (acc_vars(g, n)?, acc_vars(g, n)?)
    } else {
        (Vec::new(), Vec::new())
    };
    let st_buf = g.var(g.i32, zero)?;
    // the semaphore this CTA added to last and has not released yet
    let pending = g.var(g.i1, g.cbool(false))?;
    let pending_sem = g.var(g.i64, g.c64(0))?;

    let load_kv = |tl: &Tile<'ctx>| -> R<()> {
        let rows = g.sub(tl.row_end, tl.kv0)?;
        t.k.load_async(g, c.tid, threads, tl.kbase, tl.kv0, rows, zero)?;
        let rows = g.sub(tl.row_end, tl.kv0)?;
        t.v.load_async(g, c.tid, threads, tl.vbase, tl.kv0, rows, zero)?;
        g.cp_async_commit()
    };
    // bwd_persist: the loop over the CTA's tiles (the first tile's K and V copied before
    // it, each next tile's by the last)
    let tile_loop = match ntiles {
        Some(nt) => {
            if cap.is_some() {
                return Err(LlvmError::Unsupported(
                    "fused dQ with persistent CTAs (bwd_persist): capture gradients".into(),
                ));
            }
            let t0 = g.ctaid('x')?;
            g.if_then(g.icmp(IntPredicate::ULT, t0, nt)?, || {
                load_kv(&tile_at(t0)?)
            })?;
            if pdl {
                g.griddep_wait()?;
            }
            let tv = g.var(g.i32, t0)?;
            // bwd_persist_dyn: the tile ids handed over so far
            let mk = if dyn_tiles {
                Some(g.var(g.i32, zero)?)
            } else {
                None
            };
            let head = g.block("math_tiles");
            let work = g.block("math_tile");
            let done = g.block("math_tiles_done");
            g.br(head)?;
            g.b.position_at_end(done);
            g.b.build_return(None)?;
            g.b.position_at_end(head);
            let tn = g.geti(&tv)?;
            g.cond_br(g.icmp(IntPredicate::ULT, tn, nt)?, work, done)?;
            g.b.position_at_end(work);
            Some((tv, mk, tn, head, nt))
        }
        None => None,
    };
    let tl = match tile_loop {
        Some((_, _, tn, ..)) => {
            let tl = tile_at(tn)?;
            for x in dk.iter().chain(&dv).flatten() {
                g.set(x, g.cf(0.0))?;
            }
            tl
        }
        None => {
            load_kv(&top)?;
            if pdl {
                g.griddep_wait()?;
            }
            top
        }
    };
    let (kv0, kv_tail, jb) = (tl.kv0, tl.kv_tail, tl.jb);
    let tl = &tl;
    // this warp's warpgroup
    let wg_index = || match wg_uniform {
        Some(w) => Ok(w),
        None => g.lshr(c.warp, g.c32(2)),
    };
    // q tiles of 80 (identity score, no capture gradients: refused otherwise)
    let is_q80 = q80(opts);
    if is_q80 && (p.score.is_some() || cap.is_some()) {
        return Err(LlvmError::Unsupported(
            "fused dQ on q tiles of 80: the identity score without capture gradients".into(),
        ));
    }
    // bwd_stat_acc (q tiles of 64, no capture gradients, the TMA producer, not `overlap`
    // or `bwd_pingpong`): 1 dPᵀ starts at -Delta (dS' = P (dP - Delta) whatever the
    // score), 2 Sᵀ at -L2 / (scale log2 e) too (the identity score only: a score function
    // is applied to the unshifted s; 1 there); q tiles of 80: both, always
    let stat_acc: u8 = if is_q80 {
        2
    } else if opts.bwd_stat_acc != 0 && br == 64 && tma && cap.is_none() && !early && !pipe {
        if p.score.is_none() {
            opts.bwd_stat_acc.min(2)
        } else {
            1
        }
    } else {
        0
    };
    // Sᵀ and dPᵀ of the Q/dO buffer at byte `buf`, each its own group
    let issue_sdp = |buf: IntValue<'ctx>| -> R<(Vec<FloatValue<'ctx>>, Vec<FloatValue<'ctx>>)> {
        let wgi = wg_index()?;
        // q tiles of 80: the accumulators start at -L2 / (scale log2 e) and -Delta, so
        // Sᵀ and dPᵀ come out shifted and the element code holds no statistics (dK, dV,
        // Sᵀ, dPᵀ and 40 statistics would need 248 of the 240 registers: ptxas spilled
        // 148 bytes)
        // bwd_stat_acc: the same starts at q tiles of 64 (1: dPᵀ's alone)
        let (s0, dp0) = if stat_acc != 0 {
            // buffer 0 or 1 (TMA ring): its statistics' rows
            let sbuf = g.selecti(
                g.icmp(IntPredicate::NE, buf, zero)?,
                g.c32(t.stat_buf as i64),
                zero,
            )?;
            // element (nt, i) of the accumulator: column 2 nt + i % 2 of the loaded ones;
            // rows 8.. (i >= 2) a copy of their own (each accumulator input its own register,
            // written before the fence: else ptxas waits for Sᵀ before issuing dPᵀ, C7517)
            let neg_inv = g.fdiv(g.cf(-1.0), g.fmul(c.scale, g.cf(std::f32::consts::LOG2_E))?)?;
            let init = |stat: u32| -> R<Vec<FloatValue<'ctx>>> {
                let v = frag_col_stat_v2(g, c.lane, br, sbuf, stat)?
                    .into_iter()
                    .map(|x| {
                        if stat == t.l2 {
                            g.fmul(x, neg_inv)
                        } else {
                            Ok(g.b.build_float_neg(x, "")?)
                        }
                    })
                    .collect::<R<Vec<_>>>()?;
                (0..br / 2)
                    .map(|k| {
                        let x = v[(2 * (k / 4) + k % 2) as usize];
                        if k % 4 >= 2 { g.fcopy(x) } else { Ok(x) }
                    })
                    .collect()
            };
            // bwd_stat_acc 1: -Delta only (written before the fence: after Sᵀ's issue
            // ptxas 13.0 waits for Sᵀ at the second fence, C7517)
            let s0 = if stat_acc >= 2 {
                Some(init(t.l2)?)
            } else {
                None
            };
            (s0, Some(init(t.delta)?))
        } else {
            (None, None)
        };
        g.wgmma_fence()?;
        let s = wg_abt(g, ty, &t.k, wgi, &t.q, buf, dsc, s0.as_deref())?;
        g.wgmma_commit()?;
        let dp = wg_abt(g, ty, &t.v, wgi, &t.d_o, buf, dsc, dp0.as_deref())?;
        g.wgmma_commit()?;
        Ok((s, dp))
    };
    // bwd_s_ahead: a visit's Sᵀ is issued in the visit before (under its dK, the first
    // visit's before the loop) and crosses the back edge in flight; the visit issues dPᵀ
    // alone. Only on bwd_dv_early's element code after both waits (the products' path
    // `DvIssued` without chunks) at q tiles of 64 without the accumulator starts
    let s_ahead = opts.bwd_s_ahead
        && tma
        && bulk
        && !pipe
        && !early
        && !wg_dq
        && !is_q80
        && cap.is_none()
        && stat_acc == 0
        && br == 64
        && opts.bwd_dv_early
        && !opts.bwd_dv_chunks
        && !opts.bwd_p_under_dp;
    let s_next = if s_ahead {
        acc_vars(g, (br / 8) as usize)?
    } else {
        Vec::new()
    };
    // bwd_s_ahead: Sᵀ of the Q buffer at byte `buf` (its own group) into `s_next`
    let issue_s_ahead = |buf: IntValue<'ctx>| -> R<()> {
        let wgi = wg_index()?;
        g.wgmma_fence()?;
        let s = wg_abt(g, ty, &t.k, wgi, &t.q, buf, dsc, None)?;
        g.wgmma_commit()?;
        acc_set(g, &s_next, &from_flat(&s))
    };
    // a visit's Sᵀ and dPᵀ (bwd_s_ahead: Sᵀ in flight since the visit before, dPᵀ issued)
    let issue_visit = |buf: IntValue<'ctx>| -> R<(Vec<FloatValue<'ctx>>, Vec<FloatValue<'ctx>>)> {
        if !s_ahead {
            return issue_sdp(buf);
        }
        let wgi = wg_index()?;
        let s = to_flat(&acc_get(g, &s_next)?);
        g.wgmma_fence()?;
        let dp = wg_abt(g, ty, &t.v, wgi, &t.d_o, buf, dsc, None)?;
        g.wgmma_commit()?;
        Ok((s, dp))
    };
    // bwd_pingpong: this warpgroup's chunk `ci` of a visit's dQ part from its dSᵀ tile
    // (`ds_at` bytes into the tiles): its column and the product (issued, not committed)
    let ping_dq = |ds_at: IntValue<'ctx>, ci: u32| -> R<(IntValue<'ctx>, Vec<FloatValue<'ctx>>)> {
        let wgi = wg_index()?;
        let cc = g.c32((ci * dq_chunk_cols(opts)) as i64);
        let (ds_at, col) = if m_split(opts) {
            let slab = g.mul(wgi, g.c32((ds_t.rows * 128) as i64))?;
            (g.add(ds_at, slab)?, cc)
        } else {
            let wg_col = g.mul(wgi, g.c32((opts.d / n_wg) as i64))?;
            (ds_at, g.add(wg_col, cc)?)
        };
        Ok((col, dq_chunk(g, opts, (&ds_t, ds_at), &t.k, col, None)?))
    };
    let ping_chunks = if m_split(opts) {
        opts.d / dq_chunk_cols(opts)
    } else {
        opts.d / n_wg / dq_chunk_cols(opts)
    };
    // this thread's values of the chunk at column `col0` into slot `sl` (the layout of
    // the bulk addition: m16 row group, n8 column group, lane)
    let ping_put = |sl: IntValue<'ctx>, col0: IntValue<'ctx>, x: &[FloatValue<'ctx>]| -> R<()> {
        let wi = if m_split(opts) {
            c.warp
        } else {
            g.and(c.warp, g.c32(3))?
        };
        let lane16 = g.mul(c.lane, g.c32(16))?;
        let ng0 = g.lshr(col0, g.c32(3))?;
        let row_group = g.mul(wi, g.c32((opts.d / 8) as i64))?;
        for (nt, v) in x.chunks(4).enumerate() {
            let ng = g.add(g.add(row_group, ng0)?, g.c32(nt as i64))?;
            let off = g.add(g.mul(ng, g.c32(512))?, lane16)?;
            g.st_shared_v4(g.add(slot_addr(sl)?, off)?, [v[0], v[1], v[2], v[3]])?;
        }
        Ok(())
    };
    // visit `pn`'s dQ part (chunk 0 computed: `x0` at column `col0`) into its slot, once
    // the writer has read what the slot held, then to the writer
    let ping_add = |pn: IntValue<'ctx>,
                    ds_at: IntValue<'ctx>,
                    col0: IntValue<'ctx>,
                    x0: &[FloatValue<'ctx>]|
     -> R<()> {
        let (sl, ph) = slot_of(pn)?;
        g.mbar_wait(bar_empty(sl)?, g.xor(ph, one)?)?;
        ping_put(sl, col0, x0)?;
        for ci in 1..ping_chunks {
            g.wgmma_fence()?;
            let (col, x) = ping_dq(ds_at, ci)?;
            g.wgmma_commit()?;
            let x = g.wgmma_wait(0, &x)?;
            ping_put(sl, col, &x)?;
        }
        g.fence_proxy_async()?;
        g.mbar_arrive(bar_full(sl)?)
    };
    // bwd_visit_rec: each visit (and the end) from the producer's record
    let vrec = t.visit_rec;
    let ring_n = || -> R<IntValue<'ctx>> {
        match &ends {
            Some(e) => g.add(g.geti(&mn)?, g.geti(e)?),
            None => g.geti(&mn),
        }
    };
    if vrec.is_none() {
        scan(tl, zero, q_start, &cur)?;
    }
    let lp = g.block("q_loop");
    let epi = g.block("dkdv_dq_end");
    let pre = g.block("dkdv_dq_prologue");
    if vrec.is_some() {
        g.br(pre)?;
    } else {
        g.cond_br(g.geti(&cur.found)?, pre, epi)?;
    }
    g.b.position_at_end(pre);
    if tma {
        // K and V: every thread's copies landed and visible to the tensor cores
        g.cp_async_wait(0)?;
        g.fence_proxy_async()?;
        bar()?;
    } else {
        load_q(head_of(tl, &cur)?, g.geti(&cur.qb)?, zero)?;
    }
    if s_ahead {
        // bwd_s_ahead: the first visit's Sᵀ (bwd_visit_rec: the producer arrives for the
        // end's record too; else a visit was found)
        let (sl0, ph0) = ring_slot(g, g.geti(&mn)?)?;
        g.mbar_wait(q_full(sl0)?, ph0)?;
        issue_s_ahead(g.mul(sl0, g.c32(t.buf as i64))?)?;
    }
    if pipe {
        // the first visit's Sᵀ and dPᵀ
        let (sl0, ph0) = ring_slot(g, g.geti(&mn)?)?;
        g.mbar_wait(q_full(sl0)?, ph0)?;
        let (s0, dp0) = issue_sdp(g.mul(sl0, g.c32(t.buf as i64))?)?;
        let w = g.wgmma_wait(0, &[s0, dp0].concat())?;
        let (s0, dp0) = w.split_at(w.len() / 2);
        acc_set(g, &sv, &from_flat(s0))?;
        acc_set(g, &dpv, &from_flat(dp0))?;
    }
    g.br(lp)?;

    g.b.position_at_end(lp);
    if let Some(rec) = vrec {
        // the producer's record of this visit (or of the end), after its buffer's `full`
        let (q_sl, q_ph) = ring_slot(g, ring_n()?)?;
        // (bwd_s_ahead: waited for before this visit's Sᵀ was issued)
        if !s_ahead {
            g.mbar_wait(q_full(q_sl)?, q_ph)?;
        }
        let at = g.add(
            g.c32(rec as i64),
            g.mul(q_sl, g.c32(VISIT_REC_BYTES as i64))?,
        )?;
        let word = |k: i64| -> R<IntValue<'ctx>> {
            Ok(g.b
                .build_load(g.i32, g.smem_at(g.add(at, g.c32(4 * k))?)?, "")?
                .into_int_value())
        };
        g.set(&cur.found, g.icmp(IntPredicate::NE, word(0)?, zero)?)?;
        for (k, v) in [&cur.hi, &cur.qb, &cur.first, &cur.end, &cur.ff, &cur.fe]
            .into_iter()
            .enumerate()
        {
            g.set(v, word(k as i64 + 1)?)?;
        }
        let visit = g.block("q_visit");
        if let Some(ends) = &ends {
            // bwd_persist_dyn: the end record's buffer goes back (the producer's next
            // tile writes it)
            let end_rec = g.block("q_end_record");
            g.cond_br(g.geti(&cur.found)?, visit, end_rec)?;
            g.b.position_at_end(end_rec);
            g.mbar_arrive(q_empty(q_sl)?)?;
            g.set(ends, g.add(g.geti(ends)?, one)?)?;
            g.br(epi)?;
        } else {
            g.cond_br(g.geti(&cur.found)?, visit, epi)?;
        }
        g.b.position_at_end(visit);
    }
    let hi = g.geti(&cur.hi)?;
    let qb = g.geti(&cur.qb)?;
    let end = g.geti(&cur.end)?;
    let ff = g.geti(&cur.ff)?;
    let fe = g.geti(&cur.fe)?;
    let h = head_of(tl, &cur)?;
    // bwd_tma: this visit's buffer (the producer's ring slot)
    let (q_sl, q_ph) = if tma {
        ring_slot(g, ring_n()?)?
    } else {
        (zero, zero)
    };
    let buf = if tma {
        g.mul(q_sl, g.c32(t.buf as i64))?
    } else {
        g.geti(&st_buf)?
    };
    let other = g.xor(buf, g.c32(t.buf as i64))?;
    // bwd_tma: this visit's L2/Delta rows and dSᵀ tile (visit parity)
    let (sbuf, ds_off) = if tma {
        (
            g.mul(q_sl, g.c32(t.stat_buf as i64))?,
            g.mul(q_sl, g.c32(ds_t.bytes() as i64))?,
        )
    } else {
        (buf, zero)
    };
    if tma {
        // Q_i, dO_i (TMA: the async proxy, as wgmma) and L2, Delta landed; no barrier:
        // the dSᵀ tile this visit writes was last read by the dQ products of visit n - 2,
        // which every warpgroup completed before the dS barrier of visit n - 1 (bwd_pingpong:
        // waited for before the last visit issued this one's Sᵀ and dPᵀ; bwd_visit_rec:
        // waited for above)
        if !pipe && vrec.is_none() && !s_ahead {
            g.mbar_wait(q_full(q_sl)?, q_ph)?;
        }
    } else {
        g.cp_async_wait(0)?;
        g.fence_proxy_async()?;
        // every warpgroup's dQ product of the last visit has read dSᵀ
        bar()?;
    }
    // every thread's additions of the previous visit precede the barrier above
    if ordered {
        let rel = g.and(is_t0, g.geti(&pending)?)?;
        g.if_then(rel, || g.release_inc(g.geti(&pending_sem)?))?;
    }
    // early: Sᵀ and dPᵀ start before the next visit's search and loads (which write the
    // other buffer, read by no warp since the barrier above)
    // bwd_wscan or bwd_scan_under (not with bwd_wg_dq: not measured together) with the
    // TMA producer: the search for the next visit runs under Sᵀ and dPᵀ
    let scan_under = opts.bwd_scan_under && !opts.bwd_wg_dq;
    // bwd_pingpong: Sᵀ and dPᵀ came with the last visit's products, the next visit is
    // searched for after the element code; bwd_visit_rec: no search
    let sdp_early = if !pipe && (early || (tma && (wscan || scan_under || vrec.is_some()))) {
        Some(issue_visit(buf)?)
    } else {
        None
    };
    let has_next = if pipe || vrec.is_some() {
        None
    } else {
        scan(tl, hi, q_step(qb)?, &nxt)?;
        Some(g.geti(&nxt.found)?)
    };
    if let (false, Some(has_next)) = (tma, has_next) {
        g.if_then(has_next, || {
            load_q(head_of(tl, &nxt)?, g.geti(&nxt.qb)?, other)
        })?;
    }

    let q0 = g.mul(qb, g.c32(br as i64))?;
    let q_tail = g.icmp(IntPredicate::SGT, g.add(q0, g.c32(br as i64))?, c.lq)?;
    let in_full = g.and(
        g.icmp(IntPredicate::SLE, ff, jb)?,
        g.icmp(IntPredicate::SLT, jb, fe)?,
    )?;
    // q tiles of 80 without a mask: the q tail takes the full-block path too (the Sᵀ
    // accumulator of a q row past Lq starts at the producer's L2 = +inf times -1 / (scale
    // log2 e), so its P is 0, and its dPᵀ is 0: dO's rows zero-filled by TMA, Delta 0; so
    // dS = 0); the kv tail keeps the partial path (a kv row past Lkv, K and V zero-filled,
    // would get P = 2^-L2, which overflows where LSE < -88, and 0 x inf in dQ). ptxas 13.0:
    // no spills this way, 4 bytes with the q tail on the partial path.
    let full = if is_q80 && p.mask.is_none() {
        g.and(in_full, g.xor(kv_tail, g.cbool(true))?)?
    } else {
        g.and(in_full, g.xor(g.or(q_tail, kv_tail)?, g.cbool(true))?)?
    };
    let (s, dp) = match sdp_early {
        Some(x) => x,
        None if pipe => (Vec::new(), Vec::new()),
        None => issue_visit(buf)?,
    };
    // early (no capture gradients): Sᵀ and dPᵀ waited for one at a time below; else both
    // here, before the row statistics are read (bwd_pingpong: completed in the last visit)
    // bwd_p_under_dp: the same split without `overlap`'s dV before the dS barrier (with
    // bwd_dv_early: dV after the dSᵀ stores, before the barrier); q tiles of 64 and, since
    // session 19, D64's q tiles of 128 (FlashAttention-4's hdim-64 order)
    let p_under_dp =
        opts.bwd_p_under_dp && !early && !pipe && !wg_dq && (br == 64 || m_split(opts));
    let split = (early || p_under_dp) && cap.is_none();
    // this visit's L2/Delta rows (and the thread's kv row); `row0`: the warp's first row
    let row_stats = |row0: IntValue<'ctx>| {
        if stat_acc == 1 {
            // bwd_stat_acc 1: Delta is in dPᵀ's accumulator; L2 as bwd_stmatrix loads it
            let kv_row = g.add(g.add(kv0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
            let col = frag_col0(g, &c, q0)?;
            let z = g.cf(0.0).as_basic_value_enum();
            let l2 = frag_col_stat_v2(g, c.lane, br, sbuf, t.l2)?;
            let stats = l2
                .iter()
                .enumerate()
                .map(|(k, l)| {
                    let ci = g.c32(8 * (k / 2) as i64 + (k % 2) as i64);
                    Ok((g.add(col, ci)?, l.as_basic_value_enum(), z))
                })
                .collect::<R<Vec<_>>>()?;
            return Ok((kv_row, stats));
        }
        if stat_acc == 2 {
            // q tiles of 80: L2 and Delta are in the accumulators (issue_sdp)
            let kv_row = g.add(g.add(kv0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
            let col = frag_col0(g, &c, q0)?;
            let z = g.cf(0.0).as_basic_value_enum();
            let stats = (0..2 * br / 8)
                .map(|k| {
                    let ci = g.c32(8 * (k / 2) as i64 + (k % 2) as i64);
                    Ok((g.add(col, ci)?, z, z))
                })
                .collect::<R<Vec<_>>>()?;
            return Ok((kv_row, stats));
        }
        if opts.bwd_stmatrix {
            frag_row_stats_v2(g, &c, &t, br, (kv0, row0), q0, sbuf)
        } else {
            frag_row_stats(g, &c, &t, br, (kv0, row0), q0, sbuf)
        }
    };
    // bwd_stats_early: loaded before the wait for Sᵀ and dPᵀ, under those products (the
    // producer stored them before its `q_full` arrival, which this visit has waited for)
    let mut stats_early = if opts.bwd_stats_early && !pipe && !split {
        Some(row_stats(g.mul(c.warp, g.c32(16))?)?)
    } else {
        None
    };
    let waited = if pipe {
        Some((acc_get(g, &sv)?, acc_get(g, &dpv)?))
    } else if split {
        None
    } else {
        Some((wg_result(g, &s)?, wg_result(g, &dp)?))
    };
    let row0 = g.mul(c.warp, g.c32(16))?;
    let ec = ElemCtx {
        p,
        sd,
        env: &c.env,
        scale: c.scale,
        b: tl.b,
        h,
        lq: c.lq,
        // (bwd_doc_tiles: keys past the tile's document are outside)
        lkv: tl.row_end,
        cap: cap.as_ref(),
        full_unguarded: opts.bwd_ds_unguarded,
        affine_unguarded: opts.bwd_affine_unguarded,
        band: None,
        exp_emu: u32::from(opts.bwd_exp_emu),
        fresh_pos: None,
        // bwd_uniform_reads: the visit's box, its q tile and the CTA's kv tile
        tile: if opts.bwd_uniform_reads {
            Some(TileBox {
                b: tl.b,
                h,
                q: (q0, g.add(q0, g.c32(br as i64 - 1))?),
                kv: (tl.kv0, g.add(tl.kv0, g.c32(bc as i64 - 1))?),
            })
        } else {
            None
        },
    };
    // bwd_band_keep: an exact closed-form mask (not the affine score's path, which keeps
    // its own partial path) as q intervals per kv row on partial visits
    let band_cf = match kvb {
        KvBounds::ClosedForm(cf)
            if opts.bwd_band_keep && p.mask.is_some() && !cf.constraints.is_empty() =>
        {
            let offsets = (0..cf.constraints.len() as u32)
                .map(|i| a.int(KernelParam::KvOffset(i)))
                .collect::<R<Vec<_>>>()?;
            let ok = g.icmp(IntPredicate::EQ, a.int(KernelParam::KvAllPartial)?, zero)?;
            Some((kvb.coefficients(), offsets, ok))
        }
        _ => None,
    };
    let dv_acc = acc_get(g, &dv)?;
    let dk_acc = acc_get(g, &dk)?;
    // P, dS and dV += Pᵀ dO (which needs only this warpgroup's rows of P): with `early`
    // dV runs under dS (and the barrier that publishes it) and, without capture
    // gradients, P is computed while dPᵀ runs
    let products = if let Some((s, dp)) = waited {
        let (kv_row, stats) = match stats_early.take() {
            Some(x) => x,
            None => row_stats(row0)?,
        };
        // element (nt, i): q column q0 + 2 (lane % 4) + 8 nt + i % 2, kv row kv_row + 8 (i / 2)
        let pb = PosBase::new(g, opts, &|| Ok((frag_col0(g, &c, q0)?, kv_row)))?;
        let at = |nt: usize, i: usize| frag_element(g, &pb, kv_row, &stats, nt, i);
        if pingpong {
            // warpgroup w's turn once the other's element code has ended: warpgroup 1
            // after warpgroup 0's of this visit, warpgroup 0 after warpgroup 1's of the
            // last visit (none before its first)
            let wgi = wg_index()?;
            let wait = g.or(
                g.icmp(IntPredicate::NE, wgi, zero)?,
                g.icmp(IntPredicate::NE, g.geti(&mn)?, zero)?,
            )?;
            g.if_then(wait, || {
                g.bar_sync_reg(g.add(wgi, g.c32(BAR_TURN as i64))?, threads)
            })?;
        }
        // bwd_band_keep: rows kv_row and kv_row + 8, q relative to the thread's first
        // column q0 + 2 (lane % 4), clamped to [0, Br] / [-1, Br - 1]
        let band_rows = || -> R<[(IntValue<'ctx>, IntValue<'ctx>); 2]> {
            let (coefs, offsets, _) = band_cf.as_ref().ok_or(LlvmError::Internal("band"))?;
            let col = g.sext64(frag_col0(g, &c, q0)?)?;
            let mut out = [(zero, zero); 2];
            for (half, o) in out.iter_mut().enumerate() {
                let kv = g.add(kv_row, g.c32(8 * half as i64))?;
                let [lo, hi] = q_interval_ir(g, coefs, offsets, g.sext64(kv)?, g.sext64(c.lq)?)?;
                // a row past Lkv keeps nothing
                let past = g.icmp(IntPredicate::SGE, kv, tl.row_end)?;
                let hi = g.selecti(past, g.c64(-1), hi)?;
                let clamp = |x: IntValue<'ctx>, min: i64, max: i64| -> R<IntValue<'ctx>> {
                    let x = g.sub(x, col)?;
                    let x = g.selecti(g.icmp(IntPredicate::SLT, x, g.c64(min))?, g.c64(min), x)?;
                    let x = g.selecti(g.icmp(IntPredicate::SGT, x, g.c64(max))?, g.c64(max), x)?;
                    Ok(g.b.build_int_truncate(x, g.i32, "")?)
                };
                *o = (clamp(lo, 0, br as i64)?, clamp(hi, -1, br as i64 - 1)?);
            }
            Ok(out)
        };
        let bk = band_cf.as_ref().map(|(_, _, ok)| BandKeep {
            ok: *ok,
            rows: &band_rows,
        });
        // capture gradients: positions made in each element path (`ElemCtx::fresh_pos`)
        // from bases through an opaque move. ptxas 13.0 sm_90a D128 (with a uniform path
        // the full blocks' path folded into the partial one, as `grad_scores` does):
        // relative-position table spills 208 -> 72 bytes, T5 296 -> 64, a learned
        // `[B, H, Q, KV]` bias 184 -> 76. One H100, backward ms without / with, two rounds:
        // T5 encoder (B2 H16 L8192) 11.85, 11.84 / 10.01, 9.97 (1.19x), decoder 9.64, 9.67
        // / 9.28, 9.30; the relative table 12.31, 12.32 / 12.16, 12.15; the learned bias
        // (B1 H16 L4096) 12.76, 12.76 / 12.14, 12.14 (1.05x); D64 within 1%
        let fresh = |nt: usize, i: usize| -> R<Pos<'ctx>> {
            let col = g.opaque(frag_col0(g, &c, q0)?)?;
            let kvr = g.opaque(kv_row)?;
            let pb = PosBase::new(g, opts, &|| Ok((col, kvr)))?;
            let q = g.add(col, g.c32(8 * nt as i64 + (i % 2) as i64))?;
            frag_pos(g, &pb, q, kvr, nt, i)
        };
        let fresh_paths = cap.is_some() && c.env.err.is_none();
        let ec = ElemCtx {
            band: bk.as_ref(),
            fresh_pos: fresh_paths.then_some(&fresh as &dyn Fn(usize, usize) -> R<Pos<'ctx>>),
            ..ec
        };
        // bwd_dv_early: dV (this warpgroup's rows of P, from registers) issued before the
        // dS barrier as `early` does, so the tensor cores have it while the warpgroups
        // meet; dQ and dK after the barrier
        let dv_early = opts.bwd_dv_early && !pipe && !wg_dq && !q80(opts);
        // bwd_dv_chunks: P and dS 16 q columns at a time (one k-step of dV's RS product),
        // each chunk's dV step issued once its P is rounded; one path for full and partial
        // blocks (a branch on the block kind whose paths merge with dV in flight: ptxas
        // 13.0 serializes every wgmma, C7512)
        let chunked = opts.bwd_dv_chunks
            && dv_early
            && !early
            && !pingpong
            && cap.is_none()
            && bk.is_none()
            && c.env.err.is_none()
            && opts.bwd_exp_emu == 0
            && br == 64;
        if chunked {
            // bwd_dk_chunks: each chunk's dK step too, once its dS is rounded
            let dk_chunks = opts.bwd_dk_chunks;
            let mut acc = to_flat(&dv_acc);
            let mut acc_k = to_flat(&dk_acc);
            let (mut dsa, mut ds_all) = (Vec::new(), Vec::new());
            for kk in 0..s.len() / 2 {
                let nts = 2 * kk..2 * kk + 2;
                let (pc, dpr) = p_chunk(g, &ec, &s, &at, full, nts.clone())?;
                let pa = acc_to_a(g, ty, &pc)?;
                // the chunk's fragment was written by other statements (the steps before
                // are of the same shape on the same accumulator: ordered without it)
                g.wgmma_fence()?;
                acc = wg_ab_step(g, ty, pa[0], &t.d_o, buf, kk as u32, &acc, dsc)?;
                let dsk = ds_chunk(g, &ec, &pc, dpr.as_ref(), &dp, &at, full, nts)?;
                if opts.bwd_stmatrix {
                    store_ds_stmatrix(g, opts, (&ds_t, ds_off), c.warp, c.lane, &dsk, kk)?;
                }
                let da = acc_to_a(g, ty, &dsk)?;
                if dk_chunks {
                    g.wgmma_fence()?;
                    acc_k = wg_ab_step(g, ty, da[0], &t.q, buf, kk as u32, &acc_k, dsc)?;
                }
                dsa.extend(da);
                ds_all.extend(dsk);
            }
            if !opts.bwd_stmatrix {
                store_ds(g, opts, (&ds_t, ds_off), c.warp, c.lane, &ds_all)?;
            }
            g.wgmma_commit()?;
            if dk_chunks {
                Products::BothIssued(acc, acc_k)
            } else {
                Products::DvIssued(acc, dsa)
            }
        } else {
            let (pt, dst) = grad_scores(g, &ec, &s, &dp, &at, full)?;
            if pingpong {
                // warpgroup 0 (after its first visit): warpgroup 1's dQ product of visit n - 2
                // has read the dSᵀ tile this visit writes
                let w0 = g.and(
                    g.icmp(IntPredicate::EQ, wg_index()?, zero)?,
                    g.icmp(IntPredicate::NE, g.geti(&mn)?, zero)?,
                )?;
                g.if_then(w0, || g.bar_sync(BAR_FREE, threads))?;
            }
            // dSᵀ to shared memory for dS K; every warp's part before any warpgroup reads it
            store_ds(g, opts, (&ds_t, ds_off), c.warp, c.lane, &dst)?;
            if early || dv_early {
                let (pa, dsa) = (acc_to_a(g, ty, &pt)?, acc_to_a(g, ty, &dst)?);
                g.wgmma_fence()?;
                let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
                g.wgmma_commit()?;
                Products::DvIssued(dv1, dsa)
            } else {
                Products::Later(pt, dst)
            }
        }
    } else {
        // element (nt, i): kv row kv_row + 8 (i / 2), q column q0 + col + 8 nt + i % 2
        let kv_row = g.add(g.add(kv0, row0)?, g.lshr(c.lane, g.c32(2))?)?;
        let col = g.add(q0, g.mul(g.and(c.lane, g.c32(3))?, g.c32(2))?)?;
        let col_stat = |stat: u32| {
            if opts.bwd_stmatrix {
                frag_col_stat_v2(g, c.lane, br, sbuf, stat)
            } else {
                frag_col_stat(g, &c, br, sbuf, stat)
            }
        };
        // q tiles of 128 (bwd_p_under_dp): each statistic loaded after the wait for its
        // product, not before (32 registers each per thread: ptxas 13.0 spilled 160 bytes
        // on D64 causal with the loads first)
        let late = br == 128;
        let l2s_first = if late { None } else { Some(col_stat(t.l2)?) };
        let s = from_flat(&g.wgmma_wait(1, &s)?);
        let l2s = match l2s_first {
            Some(x) => x,
            None => col_stat(t.l2)?,
        };
        let pb = PosBase::new(g, opts, &|| Ok((col, kv_row)))?;
        let l2_at = |nt: usize, i: usize| {
            let q = g.add(col, g.c32(8 * nt as i64 + (i % 2) as i64))?;
            Ok((frag_pos(g, &pb, q, kv_row, nt, i)?, l2s[nt * 2 + i % 2]))
        };
        let (pa, pd) = grad_p(g, ty, &ec, &s, &l2_at, full)?;
        if p_under_dp {
            let deltas_first = if late { None } else { Some(col_stat(t.delta)?) };
            // waits for dPᵀ (the last group in flight)
            let dp = from_flat(&g.wgmma_wait(0, &dp)?);
            let deltas = match deltas_first {
                Some(x) => x,
                None => col_stat(t.delta)?,
            };
            let delta = |nt: usize, i: usize| Ok(deltas[nt * 2 + i % 2]);
            // bwd_ds_unguarded: no P = 0 select on full blocks of the identity score (as
            // grad_scores)
            let dst = if opts.bwd_ds_unguarded && p.score.is_none() {
                let v = acc_vars(g, pd.len())?;
                let (fast, slow, merge) = (
                    g.block("bwd_ds_full"),
                    g.block("bwd_ds_partial"),
                    g.block("bwd_ds_done"),
                );
                g.cond_br(full, fast, slow)?;
                g.b.position_at_end(fast);
                let x = pd
                    .iter()
                    .zip(&dp)
                    .enumerate()
                    .map(|(nt, (a, b))| {
                        let mut t = [g.cf(0.0); 4];
                        for (i, x) in t.iter_mut().enumerate() {
                            *x = g.fmul(a[i], g.fsub(b[i], delta(nt, i)?)?)?;
                        }
                        Ok(t)
                    })
                    .collect::<R<Vec<_>>>()?;
                acc_set(g, &v, &x)?;
                g.br(merge)?;
                g.b.position_at_end(slow);
                acc_set(g, &v, &grad_ds(g, &pd, &dp, &delta)?)?;
                g.br(merge)?;
                g.b.position_at_end(merge);
                acc_get(g, &v)?
            } else {
                grad_ds(g, &pd, &dp, &delta)?
            };
            store_ds(g, opts, (&ds_t, ds_off), c.warp, c.lane, &dst)?;
            let dsa = acc_to_a(g, ty, &dst)?;
            if opts.bwd_dv_early {
                // bwd_dv_early: dV (this warpgroup's rows of P) issued before the dS
                // barrier, as the element code after both waits does
                g.wgmma_fence()?;
                let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
                g.wgmma_commit()?;
                Products::DvIssued(dv1, dsa)
            } else {
                Products::Ready(pa, dsa)
            }
        } else {
            g.wgmma_fence()?;
            let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
            g.wgmma_commit()?;
            let deltas = col_stat(t.delta)?;
            // waits for dPᵀ (the group before dV's)
            let dp = from_flat(&g.wgmma_wait(1, &dp)?);
            let dst = grad_ds(g, &pd, &dp, &|nt, i| Ok(deltas[nt * 2 + i % 2]))?;
            store_ds(g, opts, (&ds_t, ds_off), c.warp, c.lane, &dst)?;
            Products::DvIssued(dv1, acc_to_a(g, ty, &dst)?)
        }
    };
    g.fence_proxy_async()?;
    if pingpong {
        // the other warpgroup's turn
        let id = g.sub(g.c32(BAR_TURN as i64 + 1), wg_index()?)?;
        g.bar_arrive_reg(id, threads)?;
    }
    let tile = g.add(g.mul(g.add(g.mul(tl.b, c.hq)?, h)?, nq)?, qb)?;
    let sem_addr = addr_of(g, sem, g.mul(g.zext64(tile)?, g.c64(4))?)?;
    // descending kv blocks: the last kv block of the q block's range adds first
    let rank = rank_of(tl, g.geti(&cur.first)?, end)?;
    // this tile's turn, before the barrier that publishes dS (measured on an H200: waiting
    // after issuing the products instead, behind a second barrier, was 4-9% slower)
    if ordered {
        g.if_then(is_t0, || g.spin_until_eq(sem_addr, rank))?;
    }
    if wg_dq {
        // this warpgroup's rows of dSᵀ, read by its own dQ products only: named barriers
        // 2 and 3, one per warpgroup
        g.bar_sync_reg(g.add(wg_index()?, g.c32(2))?, 128)?;
    } else if !pipe {
        bar()?;
    }
    // OrderedBulk: this visit's slot, once the writer has read what it held before
    let n = g.geti(&mn)?;
    let (sl, ph) = slot_of(n)?;
    // (bwd_pingpong: this visit's dQ part is added in the next; bwd_empty_late: waited
    // for after dQ, dV and dK are issued and dQ has completed, before its stores)
    let empty_late = opts.bwd_empty_late && bulk && !pipe && !wg_dq;
    let wait_empty = || g.mbar_wait(bar_empty(sl)?, g.xor(ph, one)?);
    if bulk && !pipe && !empty_late {
        wait_empty()?;
    }

    let base = addr_of(
        g,
        accum,
        tile_offset(g, (tl.b, c.hq, h), nq, qb, tile_bytes)?,
    )?;
    // this thread's 16 bytes of n8 column group `ng` in its warp's m16 row group (q tiles
    // of 128: warp w of the math warps holds dQ rows 16 w .., both warpgroups' rows)
    let msplit = m_split(opts);
    let wi = if msplit {
        c.warp
    } else {
        g.and(c.warp, g.c32(3))?
    };
    let lane16 = g.mul(c.lane, g.c32(16))?;
    // the first adder (Ordered) stores: DqAccum needs no zeroing
    let store_first = if ordered {
        g.b.build_int_z_extend(g.icmp(IntPredicate::EQ, rank, zero)?, g.i32, "")?
    } else {
        zero
    };
    let add_part = |col0: IntValue<'ctx>, x: &[FloatValue<'ctx>]| -> R<()> {
        let ng0 = g.lshr(col0, g.c32(3))?;
        let row_group = g.mul(wi, g.c32((opts.d / 8) as i64))?;
        for (nt, v) in x.chunks(4).enumerate() {
            let ng = g.add(g.add(row_group, ng0)?, g.c32(nt as i64))?;
            let off = g.add(g.mul(ng, g.c32(512))?, lane16)?;
            if bulk {
                g.st_shared_v4(g.add(slot_addr(sl)?, off)?, [v[0], v[1], v[2], v[3]])?;
            } else {
                let addr = g.add(base, g.zext64(off)?)?;
                g.st_or_red_v4(addr, [v[0], v[1], v[2], v[3]], store_first)?;
            }
        }
        Ok(())
    };
    let chunk_cols = dq_chunk_cols(opts);
    let wgi = wg_index()?;
    // q tiles of 128: the warpgroup's dQ rows are its 64-column slab of dSᵀ (the A
    // operand's M), every column of dQ; else its share of the columns
    // this visit's dSᵀ tile (bwd_wg_dq reads both slabs at q tiles of 128)
    let ds_visit = ds_off;
    let (chunks, wg_cols, ds_off) = if msplit {
        let slab = g.mul(wgi, g.c32((ds_t.rows * 128) as i64))?;
        (opts.d / chunk_cols, 0, g.add(ds_off, slab)?)
    } else {
        (opts.d / n_wg / chunk_cols, opts.d / n_wg, ds_off)
    };
    let col_of = |ci: u32| -> R<IntValue<'ctx>> {
        g.add(
            g.mul(wgi, g.c32(wg_cols as i64))?,
            g.c32((ci * chunk_cols) as i64),
        )
    };
    // dQ chunk 0 issued first (after the fence that orders the A fragments written
    // before it), the other products after it; once they are issued, chunk 0 is added
    // under them and the other chunks follow one by one
    let first_chunk = || -> R<Vec<FloatValue<'ctx>>> {
        g.wgmma_fence()?;
        let dq0 = dq_chunk(g, opts, (&ds_t, ds_off), &t.k, col_of(0)?, None)?;
        g.wgmma_commit()?;
        Ok(dq0)
    };
    // `behind`: the groups issued after dQ chunk 0's (dK's; none with bwd_dk_chunks)
    let other_chunks = |dq0: Vec<FloatValue<'ctx>>, behind: u32| -> R<()> {
        let dq0 = g.wgmma_wait(behind, &dq0)?;
        if empty_late {
            wait_empty()?;
        }
        add_part(col_of(0)?, &dq0)?;
        for ci in 1..chunks {
            let x = dq_chunk(g, opts, (&ds_t, ds_off), &t.k, col_of(ci)?, None)?;
            g.wgmma_commit()?;
            let x = g.wgmma_wait(0, &x)?;
            add_part(col_of(ci)?, &x)?;
        }
        Ok(())
    };
    let (dv1, dk1) = match products {
        // q tiles of 80: dQᵀ (this warpgroup's 64 rows of D, every q column), then dV and
        // dK; dQᵀ into the slot under those
        Products::Later(..) | Products::Ready(..) if q80(opts) => {
            let (pa, dsa) = match products {
                Products::Later(pt, dst) => (acc_to_a(g, ty, &pt)?, acc_to_a(g, ty, &dst)?),
                Products::Ready(pa, dsa) => (pa, dsa),
                Products::DvIssued(..) | Products::BothIssued(..) => {
                    return Err(LlvmError::Internal("products"));
                }
            };
            g.wgmma_fence()?;
            let dq = dqt_product(g, opts, (&ds_t, ds_visit), &t.k, wgi)?;
            g.wgmma_commit()?;
            let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
            let dk1 = wg_ab(g, ty, &dsa, &t.q, buf, &to_flat(&dk_acc), dsc)?;
            g.wgmma_commit()?;
            let dq = g.wgmma_wait(1, &dq)?;
            if empty_late {
                wait_empty()?;
            }
            // lane l's 16 bytes of group nt: slot + q80_slot_offset(d, warp, l, nt)
            let at = g.add(
                slot_addr(sl)?,
                g.add(g.mul(c.warp, g.c32(32 * 16))?, lane16)?,
            )?;
            for (nt, v) in dq.chunks(4).enumerate() {
                let off = q80_slot_offset(opts.d, 0, 0, nt as u32);
                g.st_shared_v4(g.add(at, g.c32(off as i64))?, [v[0], v[1], v[2], v[3]])?;
            }
            (dv1, dk1)
        }
        // bwd_pingpong (nothing in flight): dV, dK and the last visit's dQ part (its dSᵀ
        // tile, the other one; at the first visit computed, never added) in one group;
        // then that part into its slot, the next visit's search, its Q/dO buffer and its
        // Sᵀ and dPᵀ (on this visit's buffer where there is no next visit: never read)
        Products::Later(pt, dst) if pipe => {
            let (pa, dsa) = (acc_to_a(g, ty, &pt)?, acc_to_a(g, ty, &dst)?);
            g.wgmma_fence()?;
            let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
            let dk1 = wg_ab(g, ty, &dsa, &t.q, buf, &to_flat(&dk_acc), dsc)?;
            let ds_prev = g.mul(g.xor(q_sl, one)?, g.c32(ds_t.bytes() as i64))?;
            if ping_next {
                // bwd_ping_next: dV and dK one group, the dQ part the next; the next
                // visit's Sᵀ queued behind the dQ part, its dPᵀ behind the part's stores
                g.wgmma_commit()?;
                let (col0, dq0) = ping_dq(ds_prev, 0)?;
                g.wgmma_commit()?;
                let w = g.wgmma_wait(1, &[dv1.as_slice(), &dk1].concat())?;
                let (dv1, dk1) = w.split_at(dv1.len());
                // Q_i and dO_i read (dV and dK done): the buffer goes back
                g.mbar_arrive(q_empty(q_sl)?)?;
                scan(tl, hi, q_step(qb)?, &nxt)?;
                let hn = g.geti(&nxt.found)?;
                let (n_sl, n_ph) = ring_slot(g, g.add(n, one)?)?;
                g.if_then(hn, || g.mbar_wait(q_full(n_sl)?, n_ph))?;
                let nbuf = g.selecti(hn, g.mul(n_sl, g.c32(t.buf as i64))?, buf)?;
                g.wgmma_fence()?;
                let s2 = wg_abt(g, ty, &t.k, wgi, &t.q, nbuf, dsc, None)?;
                g.wgmma_commit()?;
                let dq0 = g.wgmma_wait(1, &dq0)?;
                // warpgroup 1: its dQ product has read the last visit's dSᵀ tile, which
                // warpgroup 0 writes next
                g.if_then(g.icmp(IntPredicate::NE, wgi, zero)?, || {
                    g.bar_arrive(BAR_FREE, threads)
                })?;
                g.if_then(g.icmp(IntPredicate::NE, n, zero)?, || {
                    ping_add(g.sub(n, one)?, ds_prev, col0, &dq0)
                })?;
                g.wgmma_fence()?;
                let dp2 = wg_abt(g, ty, &t.v, wgi, &t.d_o, nbuf, dsc, None)?;
                g.wgmma_commit()?;
                let w = g.wgmma_wait(0, &[s2.as_slice(), &dp2].concat())?;
                let (s2, dp2) = w.split_at(s2.len());
                acc_set(g, &sv, &from_flat(s2))?;
                acc_set(g, &dpv, &from_flat(dp2))?;
                (dv1.to_vec(), dk1.to_vec())
            } else {
                let (col0, dq0) = ping_dq(ds_prev, 0)?;
                g.wgmma_commit()?;
                let w = g.wgmma_wait(0, &[dv1.as_slice(), &dk1, &dq0].concat())?;
                let (dv1, rest) = w.split_at(dv1.len());
                let (dk1, dq0) = rest.split_at(dk1.len());
                // Q_i and dO_i read: the buffer goes back; warpgroup 1: its dQ product has read
                // the last visit's dSᵀ tile, which warpgroup 0 writes next
                g.mbar_arrive(q_empty(q_sl)?)?;
                g.if_then(g.icmp(IntPredicate::NE, wgi, zero)?, || {
                    g.bar_arrive(BAR_FREE, threads)
                })?;
                g.if_then(g.icmp(IntPredicate::NE, n, zero)?, || {
                    ping_add(g.sub(n, one)?, ds_prev, col0, dq0)
                })?;
                scan(tl, hi, q_step(qb)?, &nxt)?;
                let hn = g.geti(&nxt.found)?;
                let (n_sl, n_ph) = ring_slot(g, g.add(n, one)?)?;
                g.if_then(hn, || g.mbar_wait(q_full(n_sl)?, n_ph))?;
                let nbuf = g.selecti(hn, g.mul(n_sl, g.c32(t.buf as i64))?, buf)?;
                let (s2, dp2) = issue_sdp(nbuf)?;
                let w = g.wgmma_wait(0, &[s2.as_slice(), &dp2].concat())?;
                let (s2, dp2) = w.split_at(s2.len());
                acc_set(g, &sv, &from_flat(s2))?;
                acc_set(g, &dpv, &from_flat(dp2))?;
                (dv1.to_vec(), dk1.to_vec())
            }
        }
        // bwd_wg_dq: the dQ part of this warpgroup's 64 kv rows, every column (and at q
        // tiles of 128 every row: slab r of dSᵀ gives q rows 64 r ..), chunks of 64
        // columns; warpgroup 1 stores its chunks into the slot, warpgroup 0 adds its own
        // to them (f32, in that order) once warpgroup 1 has arrived at `half`
        Products::Later(pt, dst) if wg_dq => {
            let (pa, dsa) = (acc_to_a(g, ty, &pt)?, acc_to_a(g, ty, &dst)?);
            let first_row = g.mul(wgi, g.c32(64))?;
            let parts: Vec<(u32, u32)> = (0..br / 64)
                .flat_map(|r| (0..opts.d / 64).map(move |ci| (r, 64 * ci)))
                .collect();
            let issue = |(r, col0): (u32, u32)| {
                let a_off = g.add(ds_visit, g.c32((r * ds_t.rows * 128) as i64))?;
                dq_chunk(
                    g,
                    opts,
                    (&ds_t, a_off),
                    &t.k,
                    g.c32(col0 as i64),
                    Some(first_row),
                )
            };
            let is_wg1 = g.icmp(IntPredicate::NE, wgi, zero)?;
            let is_wg0 = g.icmp(IntPredicate::EQ, wgi, zero)?;
            let wq = g.and(c.warp, g.c32(3))?;
            let lane16 = g.mul(c.lane, g.c32(16))?;
            // warpgroup 1 stores its chunks, warpgroup 0 adds its own to them (`store`
            // = 0); slot offsets: m16 row group 4 r + warp % 4, n8 column groups from
            // col0 / 8, a base register and constants
            let wg1 = g.b.build_int_z_extend(is_wg1, g.i32, "")?;
            let row_base = g.smem_addr32(g.add(
                slot_addr(sl)?,
                g.add(g.mul(wq, g.c32((opts.d / 8 * 512) as i64))?, lane16)?,
            )?)?;
            let put = |(r, col0): (u32, u32), x: &[FloatValue<'ctx>], store, active| -> R<()> {
                for (nt, v) in x.chunks(4).enumerate() {
                    let ng = 4 * r * (opts.d / 8) + col0 / 8 + nt as u32;
                    let addr = g.add(row_base, g.c32((ng * 512) as i64))?;
                    g.st_if_or_add_shared_v4(addr, [v[0], v[1], v[2], v[3]], store, active)?;
                }
                Ok(())
            };
            g.wgmma_fence()?;
            let x0 = issue(parts[0])?;
            g.wgmma_commit()?;
            let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
            let dk1 = wg_ab(g, ty, &dsa, &t.q, buf, &to_flat(&dk_acc), dsc)?;
            g.wgmma_commit()?;
            // chunk 0 under dV and dK: warpgroup 1 stores it at once (predicated, no
            // branch with products in flight: ptxas C7519), warpgroup 0 keeps it
            let x0 = g.wgmma_wait(1, &x0)?;
            put(parts[0], &x0, one, wg1)?;
            let dv1 = g.wgmma_wait(0, &dv1)?;
            let dk1 = g.wgmma_wait(0, &dk1)?;
            // the other chunks once dV and dK have completed (registers)
            let xs = parts[1..]
                .iter()
                .map(|&part| {
                    // its accumulator registers were last written by other statements
                    // (without the fence ptxas serializes every wgmma: C7512)
                    g.wgmma_fence()?;
                    let x = issue(part)?;
                    g.wgmma_commit()?;
                    g.wgmma_wait(0, &x)
                })
                .collect::<R<Vec<_>>>()?;
            // no product in flight: warpgroup 1 stores its other chunks and arrives at
            // `half`; warpgroup 0 waits for it and adds all its chunks
            g.if_then(is_wg1, || {
                for (&part, x) in parts[1..].iter().zip(&xs) {
                    put(part, x, one, one)?;
                }
                g.mbar_arrive(bar_half(sl)?)
            })?;
            g.if_then(is_wg0, || {
                g.mbar_wait(bar_half(sl)?, ph)?;
                for (&part, x) in parts.iter().zip(std::iter::once(&x0).chain(&xs)) {
                    put(part, x, zero, one)?;
                }
                Ok(())
            })?;
            (dv1, dk1)
        }
        // bwd_dk_chunks: dV and dK are running; dQ chunk 0 after them
        Products::BothIssued(dv1, dk1) => {
            let dq0 = first_chunk()?;
            other_chunks(dq0, 0)?;
            (dv1, dk1)
        }
        // early: dV is running; dQ chunk 0, then dK, whose product runs under the
        // chunk's additions
        Products::DvIssued(dv1, dsa) => {
            let dq0 = first_chunk()?;
            let dk1 = wg_ab(g, ty, &dsa, &t.q, buf, &to_flat(&dk_acc), dsc)?;
            g.wgmma_commit()?;
            other_chunks(dq0, 1)?;
            if s_ahead {
                // bwd_s_ahead: the next visit's Sᵀ under dK, once its buffer has landed
                // (bwd_visit_rec: the next record's buffer, the end's too; else, without a
                // next visit, this visit's buffer: issued without a branch, never read)
                let (n_sl, n_ph) = ring_slot(g, g.add(n, one)?)?;
                let n_buf = g.mul(n_sl, g.c32(t.buf as i64))?;
                let n_buf = match has_next {
                    Some(hn) => {
                        g.if_then(hn, || g.mbar_wait(q_full(n_sl)?, n_ph))?;
                        g.selecti(hn, n_buf, buf)?
                    }
                    None => {
                        g.mbar_wait(q_full(n_sl)?, n_ph)?;
                        n_buf
                    }
                };
                issue_s_ahead(n_buf)?;
            }
            (dv1, dk1)
        }
        // dQ chunk 0 first, then dV and dK: the first chunk's additions run under those
        Products::Later(..) | Products::Ready(..) => {
            let (pa, dsa) = match products {
                Products::Later(pt, dst) => (acc_to_a(g, ty, &pt)?, acc_to_a(g, ty, &dst)?),
                Products::Ready(pa, dsa) => (pa, dsa),
                Products::DvIssued(..) | Products::BothIssued(..) => {
                    return Err(LlvmError::Internal("products"));
                }
            };
            let dq0 = first_chunk()?;
            let dv1 = wg_ab(g, ty, &pa, &t.d_o, buf, &to_flat(&dv_acc), dsc)?;
            let dk1 = wg_ab(g, ty, &dsa, &t.q, buf, &to_flat(&dk_acc), dsc)?;
            g.wgmma_commit()?;
            other_chunks(dq0, 1)?;
            (dv1, dk1)
        }
    };
    if bulk {
        // this thread's part of the slot, to the writer's bulk copy (async proxy;
        // bwd_wg_dq: warpgroup 0's sums)
        let fill = || -> R<()> {
            g.fence_proxy_async()?;
            g.mbar_arrive(bar_full(sl)?)
        };
        if wg_dq {
            g.if_then(g.icmp(IntPredicate::EQ, wgi, zero)?, fill)?;
        } else if !pipe {
            fill()?;
        }
        g.set(&mn, g.add(n, one)?)?;
    }
    if pipe {
        // completed above (and the buffer given back)
        acc_set(g, &dv, &from_flat(&dv1))?;
        acc_set(g, &dk, &from_flat(&dk1))?;
    } else if s_ahead {
        // the next visit's Sᵀ stays in flight
        acc_set(g, &dv, &from_flat(&g.wgmma_wait(1, &dv1)?))?;
        acc_set(g, &dk, &from_flat(&g.wgmma_wait(1, &dk1)?))?;
    } else {
        acc_set(g, &dv, &wg_result(g, &dv1)?)?;
        acc_set(g, &dk, &wg_result(g, &dk1)?)?;
    }
    if tma && !pipe {
        // every product reading Q_i, dO_i has completed: the buffer goes back
        g.mbar_arrive(q_empty(q_sl)?)?;
    }
    g.set(&pending, g.cbool(true))?;
    g.set(&pending_sem, sem_addr)?;
    let has_next = match has_next {
        Some(x) => x,
        None => g.geti(&nxt.found)?,
    };
    g.set(&st_buf, other)?;
    if vrec.is_some() {
        g.br(lp)?;
    } else {
        cur.copy_from(g, &nxt)?;
        g.cond_br(has_next, lp, epi)?;
    }

    g.b.position_at_end(epi);
    if s_ahead {
        // bwd_s_ahead: the Sᵀ issued for no visit has read its buffer
        g.wgmma_wait(0, &to_flat(&acc_get(g, &s_next)?))?;
    }
    if pingpong {
        // the last visit's dQ part; warpgroup 0 first takes warpgroup 1's last turn (its
        // dSᵀ stored) and last `BAR_FREE` arrival, so every arrival has its wait
        g.if_then(g.icmp(IntPredicate::NE, g.geti(&mn)?, zero)?, || {
            g.if_then(g.icmp(IntPredicate::EQ, wg_index()?, zero)?, || {
                g.bar_sync(BAR_TURN, threads)?;
                g.bar_sync(BAR_FREE, threads)
            })?;
            let last = g.sub(g.geti(&mn)?, one)?;
            let ds_last = g.mul(g.and(last, one)?, g.c32(ds_t.bytes() as i64))?;
            g.wgmma_fence()?;
            let (col0, x) = ping_dq(ds_last, 0)?;
            g.wgmma_commit()?;
            let x = g.wgmma_wait(0, &x)?;
            ping_add(last, ds_last, col0, &x)
        })?;
    }
    if let Some((tv, mk, tn, head, nt)) = tile_loop {
        // every math warp has done with K and V (its products completed): the next
        // tile's copies, then this tile's dK and dV stores, under them
        let next = match &mk {
            Some(mk) => read_tile(mk)?,
            None => g.add(tn, g.nctaid('x')?)?,
        };
        // (a tile without visits has not waited for its own copies)
        g.cp_async_wait(0)?;
        bar()?;
        g.if_then(g.icmp(IntPredicate::ULT, next, nt)?, || {
            load_kv(&tile_at(next)?)
        })?;
        dkdv_store(
            g,
            opts,
            &c,
            a,
            (tl.b, tl.hk, g.c32(0)),
            (kv0, tl.row_end),
            &dk,
            &dv,
        )?;
        g.set(&tv, next)?;
        g.br(head)?;
        return Ok(());
    }
    g.cp_async_wait(0)?;
    if ordered {
        g.barrier()?;
        let rel = g.and(is_t0, g.geti(&pending)?)?;
        g.if_then(rel, || g.release_inc(g.geti(&pending_sem)?))?;
    }
    if let Some(cap) = &cap {
        cap.finish(g, c.lane)?;
    }
    let store = g.block("dkdv_store");
    g.br(store)?;
    if opts.bwd_store_pairs {
        g.b.position_at_end(store);
        g.cp_async_wait(0)?;
        dkdv_store(
            g,
            opts,
            &c,
            a,
            (tl.b, tl.hk, g.c32(0)),
            (kv0, tl.row_end),
            &dk,
            &dv,
        )?;
        g.b.build_return(None)?;
        return Ok(());
    }
    dkdv_epilogue(g, opts, &c, a, (tl.hk, g.c32(0)), kv0, &dk, &dv, store)
}

/// An accumulator's rows `row0 + lane / 4 (+ 8)` (below `len`) of `cols` 16-bit columns
/// (times `mul`) stored from its fragments, 8 bytes per thread and instruction: in each
/// pair of n8 column groups (2k, 2k + 1), the even lane of a quad's lane pair keeps its
/// word of group 2k and gets its partner's (the next two columns), the odd lane keeps
/// its word of group 2k + 1 and gets its partner's (the two columns before): one
/// `shfl.sync.idx` per pair, then `st.global.v2.b32` of 4 contiguous columns (group
/// 2k + odd, column 2 (quad & 2)). Lanes 0 and 2 of a quad so write one group's 16
/// bytes of a row: full 32-byte sectors per instruction, half the store instructions
/// of one word per group (`store_rows`).
#[allow(clippy::too_many_arguments)]
pub(super) fn store_rows_pairs<'ctx>(
    g: &Gpu<'ctx>,
    ty: crate::backend::llvm::InputType,
    lane: IntValue<'ctx>,
    base: inkwell::values::PointerValue<'ctx>,
    (row0, len): (IntValue<'ctx>, IntValue<'ctx>),
    cols: u32,
    acc: &Acc<'ctx>,
    mul: Option<FloatValue<'ctx>>,
) -> R<()> {
    let quad = g.and(lane, g.c32(3))?;
    let odd = g.icmp(IntPredicate::NE, g.and(lane, g.c32(1))?, g.c32(0))?;
    let partner = g.xor(lane, g.c32(1))?;
    let rb = g.add(row0, g.lshr(lane, g.c32(2))?)?;
    // byte of this thread's first 4 columns: group `odd`, column 2 (quad & 2)
    let col_byte = g.add(
        g.mul(g.b.build_int_z_extend(odd, g.i32, "")?, g.c32(16))?,
        g.mul(g.and(quad, g.c32(2))?, g.c32(4))?,
    )?;
    let v2 = g.i32.vec_type(2);
    for hr in 0..2 {
        let row = g.add(rb, g.c32(8 * hr as i64))?;
        let words: Vec<IntValue<'ctx>> = acc
            .iter()
            .map(|x| {
                let f = |v| match mul {
                    Some(m) => g.fmul(v, m),
                    None => Ok(v),
                };
                g.pack2(ty, f(x[2 * hr])?, f(x[2 * hr + 1])?)
            })
            .collect::<R<_>>()?;
        // every lane shuffles (full mask) before the row bound's branch
        let pairs: Vec<(IntValue<'ctx>, IntValue<'ctx>)> = words
            .chunks(2)
            .map(|w| {
                let send = g.selecti(odd, w[0], w[1])?;
                let keep = g.selecti(odd, w[1], w[0])?;
                let got = g.shfl_idx_i32(send, partner)?;
                Ok((g.selecti(odd, got, keep)?, g.selecti(odd, keep, got)?))
            })
            .collect::<R<_>>()?;
        g.if_then(g.icmp(IntPredicate::SLT, row, len)?, || {
            let off = g.add(
                g.mul(g.zext64(row)?, g.c64(cols as i64 * 2))?,
                g.zext64(col_byte)?,
            )?;
            for (k, (lo, hi)) in pairs.iter().enumerate() {
                let mut v = v2.get_undef();
                v = g.b.build_insert_element(v, *lo, g.c32(0), "")?;
                v = g.b.build_insert_element(v, *hi, g.c32(1), "")?;
                let ptr = g.gep_bytes(base, g.add(off, g.c64(k as i64 * 32))?)?;
                let st = g.b.build_store(ptr, v)?;
                st.set_alignment(8)
                    .map_err(|_| LlvmError::Internal("alignment"))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The visit's (mbarrier) slot and phase: visit `n` uses buffer `n % 2` in its
/// `(n / 2)`-th phase (as the dQ slots, [`DQ_SLOTS`] = 2).
fn ring_slot<'ctx>(g: &Gpu<'ctx>, n: IntValue<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
    Ok((g.and(n, g.c32(1))?, g.and(g.lshr(n, g.c32(1))?, g.c32(1))?))
}

type Scan<'a, 'ctx> = &'a dyn Fn(IntValue<'ctx>, IntValue<'ctx>, &Visit<'ctx>) -> R<()>;
type BarOf<'a, 'ctx> = &'a dyn Fn(IntValue<'ctx>) -> R<IntValue<'ctx>>;
type Step<'a, 'ctx> = &'a dyn Fn(IntValue<'ctx>) -> R<IntValue<'ctx>>;
type HeadOf<'a, 'ctx> = &'a dyn Fn(&Visit<'ctx>) -> R<IntValue<'ctx>>;

/// [`PtxOptions::bwd_tma`]: the producer warp (`PRODUCER_WARP` of the writer warpgroup)
/// walks the math warps' visits and, per visit `n` (buffer `n % 2`): waits `empty` (the
/// math warps have done with what the buffer held), every lane stores two rows of L2
/// and Delta (+inf / 0 past Lq) and arrives at `full`; lane 0 arrives with the expected
/// bytes and issues the TMA copies of Q_i and dO_i (one box of 64 columns per slab,
/// rows past Lq zero-filled), whose bytes complete the phase. With
/// [`PtxOptions::bwd_stats_bulk`] a visit whose q tile lies within Lq (rows 16-byte
/// aligned) has no per-lane rows: lane 0 copies them with two `cp.async.bulk` on `full`.
#[allow(clippy::too_many_arguments)]
fn produce<'ctx>(
    g: &Gpu<'ctx>,
    c: &Common<'ctx>,
    t: &DkDvTiles,
    o: &PtxOptions,
    a: &Args<'_, 'ctx>,
    (scan, q_start, q_step): (Scan<'_, 'ctx>, IntValue<'ctx>, Step<'_, 'ctx>),
    (b, head_of): (IntValue<'ctx>, HeadOf<'_, 'ctx>),
    (q_full, q_empty): (BarOf<'_, 'ctx>, BarOf<'_, 'ctx>),
    (lane, pv, pn): (IntValue<'ctx>, &Visit<'ctx>, &Var<'ctx>),
) -> R<()> {
    let (zero, one) = (g.c32(0), g.c32(1));
    let br = o.q_block;
    let (l2p, dlp) = (a.ptr(KernelParam::Lse2)?, a.ptr(KernelParam::Delta)?);
    scan(zero, q_start, pv)?;
    let head = g.block("producer_head");
    let body = g.block("producer_visit");
    let done = g.block("producer_done");
    g.br(head)?;
    g.b.position_at_end(head);
    g.cond_br(g.geti(&pv.found)?, body, done)?;
    g.b.position_at_end(body);
    let n = g.geti(pn)?;
    let (sl, ph) = ring_slot(g, n)?;
    g.mbar_wait(q_empty(sl)?, g.xor(ph, one)?)?;
    let h = head_of(pv)?;
    let q0 = g.mul(g.geti(&pv.qb)?, g.c32(br as i64))?;
    let slice = g.add(g.mul(b, c.hq)?, h)?;
    let bufo = g.mul(sl, g.c32(t.buf as i64))?;
    // bwd_stats_bulk: the rows by two bulk copies where the q tile lies within Lq and
    // every row's address is 16-byte aligned (Lq % 4 = 0, q0 a multiple of 4, the arrays'
    // bases); else (and without the option) every lane loads and stores its rows
    let bulk_ok = if stats_bulk_fits(o, t) {
        let fits = g.icmp(IntPredicate::SLE, g.add(q0, g.c32(br as i64))?, c.lq)?;
        let lq_al = g.icmp(IntPredicate::EQ, g.and(c.lq, g.c32(3))?, zero)?;
        let bases = g.or(
            g.b.build_ptr_to_int(l2p, g.i64, "")?,
            g.b.build_ptr_to_int(dlp, g.i64, "")?,
        )?;
        let al = g.icmp(
            IntPredicate::EQ,
            g.and(bases, g.i64.const_int(15, false))?,
            g.i64.const_int(0, false),
        )?;
        Some(g.and(g.and(fits, lq_al)?, al)?)
    } else {
        None
    };
    let rows_done = bulk_ok.map(|_| g.block("producer_rows_done"));
    if let (Some(ok), Some(done_bb)) = (bulk_ok, rows_done) {
        let rows_bb = g.block("producer_rows");
        g.cond_br(ok, done_bb, rows_bb)?;
        g.b.position_at_end(rows_bb);
    }
    // (q tiles of 80: the third step's lanes 16.. have no row)
    for k in 0..br.div_ceil(32) {
        let i = g.add(lane, g.c32(32 * k as i64))?;
        let has_row = if br.is_multiple_of(32) || 32 * (k + 1) <= br {
            None
        } else {
            Some(g.icmp(IntPredicate::ULT, i, g.c32(br as i64))?)
        };
        let body_bb = has_row.map(|_| g.block("producer_row"));
        let skip_bb = has_row.map(|_| g.block("producer_row_done"));
        if let (Some(ok), Some(b1), Some(b2)) = (has_row, body_bb, skip_bb) {
            g.cond_br(ok, b1, b2)?;
            g.b.position_at_end(b1);
        }
        let q = g.add(q0, i)?;
        let ok = g.icmp(IntPredicate::SLT, q, c.lq)?;
        let row = g.add(
            g.mul(g.zext64(slice)?, g.zext64(c.lq)?)?,
            g.zext64(g.selecti(ok, q, zero)?)?,
        )?;
        let l2 = g.selectf(ok, g.load_f32(l2p, row)?, g.cf(f32::INFINITY))?;
        let dl = g.selectf(ok, g.load_f32(dlp, row)?, g.cf(0.0))?;
        let at = g.add(g.mul(sl, g.c32(t.stat_buf as i64))?, g.mul(i, g.c32(4))?)?;
        g.store(g.smem_at(g.add(at, g.c32(t.l2 as i64))?)?, l2)?;
        g.store(g.smem_at(g.add(at, g.c32(t.delta as i64))?)?, dl)?;
        if let Some(b2) = skip_bb {
            g.br(b2)?;
            g.b.position_at_end(b2);
        }
    }
    if let Some(done_bb) = rows_done {
        g.br(done_bb)?;
        g.b.position_at_end(done_bb);
    }
    let tma_bb = g.block("producer_tma");
    let arrive_bb = g.block("producer_arrive");
    let next_bb = g.block("producer_next");
    g.cond_br(g.icmp(IntPredicate::EQ, lane, zero)?, tma_bb, arrive_bb)?;
    g.b.position_at_end(tma_bb);
    // bwd_visit_rec: this visit's record, before the arrival that publishes the buffer
    if let Some(rec) = t.visit_rec {
        let words = [
            one,
            g.geti(&pv.hi)?,
            g.geti(&pv.qb)?,
            g.geti(&pv.first)?,
            g.geti(&pv.end)?,
            g.geti(&pv.ff)?,
            g.geti(&pv.fe)?,
        ];
        store_rec(g, rec, sl, &words)?;
    }
    let full = q_full(sl)?;
    let tile_bytes = t.q.bytes() + t.d_o.bytes();
    match bulk_ok {
        None => g.mbar_arrive_expect_tx(full, tile_bytes)?,
        Some(ok) => {
            let (bulk_bb, rows_bb, cont) = (
                g.block("producer_stats_bulk"),
                g.block("producer_stats_rows"),
                g.block("producer_stats_done"),
            );
            g.cond_br(ok, bulk_bb, rows_bb)?;
            g.b.position_at_end(bulk_bb);
            g.mbar_arrive_expect_tx(full, tile_bytes + 8 * br)?;
            let row = g.add(g.mul(g.zext64(slice)?, g.zext64(c.lq)?)?, g.zext64(q0)?)?;
            let row_bytes = g.mul(row, g.i64.const_int(4, false))?;
            for (stat, p) in [(t.l2, l2p), (t.delta, dlp)] {
                let dst = g.add(g.mul(sl, g.c32(t.stat_buf as i64))?, g.c32(stat as i64))?;
                let src = g.add(g.b.build_ptr_to_int(p, g.i64, "")?, row_bytes)?;
                g.bulk_load(g.smem_addr32(dst)?, src, 4 * br, full)?;
            }
            g.br(cont)?;
            g.b.position_at_end(rows_bb);
            g.mbar_arrive_expect_tx(full, tile_bytes)?;
            g.br(cont)?;
            g.b.position_at_end(cont);
        }
    }
    for (tile, map) in [(&t.q, KernelParam::TmaQ), (&t.d_o, KernelParam::TmaDo)] {
        let map = a.ptr(map)?;
        for s in 0..tile.cols / 64 {
            let off = g.add(bufo, g.c32((tile.offset + s * tile.rows * 128) as i64))?;
            g.tma_load_3d(
                g.smem_addr32(off)?,
                map,
                [g.c32(64 * s as i64), q0, slice],
                full,
            )?;
        }
    }
    g.br(next_bb)?;
    g.b.position_at_end(arrive_bb);
    g.mbar_arrive(q_full(sl)?)?;
    g.br(next_bb)?;
    g.b.position_at_end(next_bb);
    g.set(pn, g.add(n, one)?)?;
    scan(g.geti(&pv.hi)?, q_step(g.geti(&pv.qb)?)?, pv)?;
    g.br(head)?;
    g.b.position_at_end(done);
    if let Some(rec) = t.visit_rec {
        // the end: a record without a visit in the next buffer, once it is free
        let (sl, ph) = ring_slot(g, g.geti(pn)?)?;
        g.mbar_wait(q_empty(sl)?, g.xor(ph, one)?)?;
        g.if_then(g.icmp(IntPredicate::EQ, lane, zero)?, || {
            store_rec(g, rec, sl, &[zero])
        })?;
        g.mbar_arrive(q_full(sl)?)?;
        if o.bwd_persist {
            // bwd_persist_dyn: the end record's buffer counts (the math warps give it back)
            g.set(pn, g.add(g.geti(pn)?, one)?)?;
        }
    }
    Ok(())
}

/// [`PtxOptions::bwd_stats_bulk`] applies to this kernel: the option is on and each ring
/// buffer's L2 and Delta rows (4 Br bytes each) start 16-byte aligned, as `cp.async.bulk`
/// needs (else the producer keeps its per-lane rows).
fn stats_bulk_fits(o: &PtxOptions, t: &DkDvTiles) -> bool {
    o.bwd_stats_bulk
        && (t.l2 | t.delta | t.stat_buf).is_multiple_of(16)
        && (4 * o.q_block).is_multiple_of(16)
}

/// [`PtxOptions::bwd_visit_rec`]: stores `words` as the first words of ring buffer `sl`'s
/// visit record (at byte `rec` of shared memory).
fn store_rec<'ctx>(g: &Gpu<'ctx>, rec: u32, sl: IntValue<'ctx>, words: &[IntValue<'ctx>]) -> R<()> {
    let at = g.add(g.c32(rec as i64), g.mul(sl, g.c32(VISIT_REC_BYTES as i64))?)?;
    for (k, &w) in words.iter().enumerate() {
        g.store(g.smem_at(g.add(at, g.c32(4 * k as i64))?)?, w)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's and math warps' `setmaxnreg` counts fit the 384-thread launch (a
    /// split of the whole register file, 128 x 32 + 256 x 240, hung every CTA on an
    /// H200), and a split that would not fit is refused.
    #[test]
    fn register_split_fits_the_launch() {
        let default = (WRITER_REGS, MATH_REGS);
        assert!(register_split_fits(256, 128, default));
        assert_eq!(MATH_REGS * 256 + WRITER_REGS * 128, 168 * 384);
        assert!(!register_split_fits(384, 128, default));
        assert!(
            !register_split_fits(128, 128, default),
            "inc to 240 from a 248 cap"
        );
        // bwd_writer_regs: the math warpgroups take what is left, and it fits
        let o = PtxOptions::backward(
            crate::backend::llvm::Arch::Sm90,
            128,
            128,
            crate::backend::llvm::InputType::Bf16,
        );
        assert_eq!(register_split(&o), default);
        for (w, m) in [(24, 240), (32, 232), (40, 232), (48, 224), (56, 224)] {
            let split = register_split(&PtxOptions {
                bwd_writer_regs: w,
                ..o
            });
            assert_eq!(split, (w, m), "writer {w}");
            assert!(register_split_fits(256, 128, split), "writer {w}");
            assert!(m * 256 + w * 128 <= 168 * 384, "writer {w}");
        }
    }

    /// `bwd_store_pairs` (`store_rows_pairs`): each lane of a quad stores, for pair k of
    /// n8 column groups, the words (lo, hi) at row byte 32 k + 16 odd + 4 (quad & 2): the
    /// even lane its own word of group 2k then its partner's, the odd lane its partner's
    /// word of group 2k + 1 then its own (what its `shfl` and selects give). Every 4-byte
    /// word of the row (2 columns) is written exactly once, with the word the per-word
    /// stores of `store_rows` write there (lane q's word of group nt at byte 16 nt + 4 q).
    #[test]
    fn store_pairs_write_the_words_of_store_rows() {
        for cols in [64u32, 128] {
            let groups = cols / 8;
            // byte in the row -> (lane of the quad, group) of the word written there
            let mut seen = std::collections::BTreeMap::new();
            for q in 0..4u32 {
                let odd = q & 1;
                let partner = q ^ 1;
                for k in 0..groups / 2 {
                    // what lane q sends: its word of group 2k + 1 - odd; what it keeps:
                    // group 2k + odd; what it gets: the partner's sent word
                    let keep = (q, 2 * k + odd);
                    let got = (partner, 2 * k + (1 - (partner & 1)));
                    let (lo, hi) = if odd == 1 { (got, keep) } else { (keep, got) };
                    let byte = 32 * k + 16 * odd + 4 * (q & 2);
                    for (i, w) in [lo, hi].into_iter().enumerate() {
                        assert!(
                            seen.insert(byte + 4 * i as u32, w).is_none(),
                            "{cols}: byte {byte} twice"
                        );
                    }
                }
            }
            assert_eq!(seen.len() as u32, cols / 2, "{cols}: every word of the row");
            for (byte, (lane, nt)) in seen {
                assert_eq!(byte, 16 * nt + 4 * lane, "{cols}: lane {lane} group {nt}");
            }
        }
    }

    /// q tiles of 80 (`store_ds_q80`): every element (kv, q) of every warp's dSᵀ
    /// accumulator lands, through `stmatrix.trans` (memory row r of matrix m, at the address
    /// of lane 8m + r, receives column r of the fragment matrix: its element c is lane 4c +
    /// r / 2's register m, half r % 2), at the byte where the dQᵀ product's K-major B
    /// descriptor reads dS (q rows x kv columns, 64-column slabs `rows * 128` bytes apart,
    /// element at q 128 + slab + (((kv % 64) / 8) ^ q % 8) 16 + 2 (kv % 8)), each once.
    #[test]
    fn q80_ds_stores_match_the_swizzled_tile() {
        let (rows, bc, br) = (80u32, 128u32, 80u32);
        let mut seen = std::collections::BTreeSet::new();
        for warp in 0..bc / 16 {
            for p in 0..br / 16 {
                for m in 0..4 {
                    for r in 0..8 {
                        let row_addr = ds_q80_lane_offset(warp, 8 * m + r, p, rows);
                        assert_eq!(row_addr % 16, 0);
                        for c in 0..8 {
                            let lane = 4 * c + r / 2;
                            let (nt, i) = (2 * p + m / 2, 2 * (m % 2) + r % 2);
                            let kv = 16 * warp + lane / 4 + 8 * (i / 2);
                            let q = 8 * nt + 2 * (lane % 4) + i % 2;
                            let want = (kv / 64) * rows * 128
                                + q * 128
                                + (((kv % 64) / 8) ^ (q % 8)) * 16
                                + 2 * (kv % 8);
                            assert_eq!(
                                row_addr + 2 * c,
                                want,
                                "warp {warp} p {p} m {m} r {r} c {c}"
                            );
                            assert!(seen.insert(want));
                        }
                    }
                }
            }
        }
        assert_eq!(seen.len() as u32, br * bc);
    }

    /// `bwd_stmatrix`'s dSᵀ stores write the same value to the same byte as the per-pair
    /// stores, for every warp, lane and accumulator element (kv tiles of 128, q tiles of
    /// 64 and 128): stmatrix's fragment order as the PTX ISA gives it (matrix m's row r at
    /// the address of lane 8m + r; lane l's register m holds row l / 4, columns 2 (l % 4)
    /// and + 1 of matrix m), and both against the 128-byte swizzle the wgmma descriptors
    /// read (element (row, col) at row 128 + slab + ((col % 64 / 8) ^ row % 8) 16 + 2 (col
    /// % 8), slabs of 64 columns `rows * 128` bytes apart).
    #[test]
    fn stmatrix_ds_stores_match_pair_stores() {
        use std::collections::BTreeMap;
        let rows = 128;
        for br in [64u32, 128] {
            // byte -> (warp, lane, nt, element i, high byte)
            let mut pairs = BTreeMap::new();
            let mut stm = BTreeMap::new();
            for warp in 0..rows / 16 {
                for lane in 0..32 {
                    for nt in 0..br / 8 {
                        for i in 0..4 {
                            let a = ds_pair_offset(warp, lane, nt, i / 2, rows) + 2 * (i % 2);
                            for byte in 0..2 {
                                assert!(
                                    pairs.insert(a + byte, (warp, lane, nt, i, byte)).is_none()
                                );
                            }
                            // the swizzled tile's element at `a`
                            let (slab, in_slab) = (a / (rows * 128), a % (rows * 128));
                            let row = in_slab / 128;
                            let col = slab * 64
                                + ((in_slab % 128 / 16) ^ (row % 8)) * 8
                                + in_slab % 16 / 2;
                            assert_eq!(row, 16 * warp + lane / 4 + 8 * (i / 2));
                            assert_eq!(col, 8 * nt + 2 * (lane % 4) + i % 2);
                        }
                    }
                }
                for p in 0..br / 16 {
                    for m in 0..4 {
                        for r in 0..8 {
                            let row_addr = ds_stmatrix_lane_offset(warp, 8 * m + r, p, rows);
                            assert_eq!(row_addr % 16, 0);
                            // lanes 4r .. 4r + 3 hold row r of matrix m, register m is
                            // pack2 of group 2p + m / 2's elements 2 (m % 2), + 1
                            for q in 0..4 {
                                let lane = 4 * r + q;
                                for e in 0..2 {
                                    let a = row_addr + 2 * (2 * q + e);
                                    let (nt, i) = (2 * p + m / 2, 2 * (m % 2) + e);
                                    for byte in 0..2 {
                                        let v = (warp, lane, nt, i, byte);
                                        assert!(stm.insert(a + byte, v).is_none());
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(pairs.len() as u32, rows * br * 2);
            assert_eq!(pairs, stm, "q tiles of {br}");
        }
    }
}
