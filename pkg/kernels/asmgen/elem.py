#!/usr/bin/env python3
"""Writes ../elem_amd64.s: the AVX-512F element-wise kernels (see ../api.go).

Run from this directory: python3 elem.py. The output is committed; go vet's
asmdecl checks it against elem_amd64.go.
"""
import struct
def f32hex(x): return "$0x%08x" % struct.unpack('<I', struct.pack('<f', x))[0]

out = []
w = out.append
w("//go:build amd64 && !purego\n")
w("// Produced from a template (see asmgen/elem.py); keep every loop and its")
w("// masked tail in step. AVX-512F element-wise kernels:")
w("// each loop handles 16 lanes per step and the remainder with a lane mask.\n")
w('#include "textflag.h"\n')

consts = [("hi", 100.0), ("lo", -104.0), ("log2e", 1.4426950408889634), ("ln2hi", 0.693359375),
          ("ln2lo", -2.12194440e-4), ("c7", 1/5040), ("c6", 1/720), ("c5", 1/120), ("c4", 1/24),
          ("c3", 1/6), ("c2", 0.5), ("one", 1.0)]
for i, (n, v) in enumerate(consts):
    w("DATA expc<>+%d(SB)/4, %s // %s" % (4*i, f32hex(v), n))
w("GLOBL expc<>(SB), RODATA|NOPTR, $%d\n" % (4*len(consts)))

def load_exp_consts():
    for i in range(len(consts)):
        w("\tVBROADCASTSS expc<>+%d(SB), Z%d" % (4*i, 16+i))

def exp(src, dst, tn="Z14", tr="Z15"):
    # dst = exp(src); Z16..Z27 hold the constants. Max relative error ~2 ulp.
    return [f"VMINPS {src}, Z16, {tr}", f"VMAXPS {tr}, Z17, {tr}", f"VMULPS Z18, {tr}, {tn}",
            f"VRNDSCALEPS $0, {tn}, {tn}", f"VFNMADD231PS Z19, {tn}, {tr}", f"VFNMADD231PS Z20, {tn}, {tr}",
            f"VMOVAPS Z21, {dst}"] + [f"VFMADD213PS Z{c}, {tr}, {dst}" for c in (22, 23, 24, 25, 26, 27, 27)] + \
           [f"VSCALEFPS {tn}, {dst}, {dst}"]

def func(name, sig, frame, args, ins, outs, body, setup=(), acc=None, ret=None):
    """args: list of (reg, fpname, offset, kind) loaded at entry; ins/outs: (ptrreg, zreg);
    body: list of instr strings with {K} placeholder for the tail mask; acc: (zreg, init instrs, reduce op)."""
    w(f"// func {sig}")
    w(f"TEXT ·{name}(SB), NOSPLIT, ${frame}")
    for reg, fp, off, kind in args:
        if kind == "q":
            w(f"\tMOVQ {fp}+{off}(FP), {reg}")
        else:
            w(f"\tVBROADCASTSS {fp}+{off}(FP), {reg}")
    for s in setup:
        w("\t" + s)
    if acc:
        for s in acc[1]:
            w("\t" + s)
    ptrs = sorted(set([p for p, _ in ins] + [p for p, _ in outs]))
    def emit(tail):
        K = "K1, " if tail else ""
        for p, z in ins:
            w(f"\tVMOVUPS{'.Z' if tail else ''} ({p}), {K}{z}")
        for s in body:
            w("\t" + s.replace("{K}", K))
        if acc:
            w("\t" + acc[2].replace("{K}", K))
        for p, z in outs:
            w(f"\tVMOVUPS {z}, {K}({p})")
    w(f"{name}_loop:")
    w("\tCMPQ CX, $16")
    w(f"\tJLT {name}_tail")
    emit(False)
    for p in ptrs:
        w(f"\tADDQ $64, {p}")
    w("\tSUBQ $16, CX")
    w(f"\tJMP {name}_loop")
    w(f"{name}_tail:")
    w("\tTESTQ CX, CX")
    w(f"\tJEQ {name}_done")
    w("\tMOVL $1, R15")
    w("\tSHLL CX, R15")
    w("\tDECL R15")
    w("\tKMOVW R15, K1")
    emit(True)
    w(f"{name}_done:")
    if acc:
        z = acc[0]
        op = acc[3]
        y, x = "Y" + z[1:], "X" + z[1:]
        w(f"\tVEXTRACTF64X4 $1, {z}, Y13")
        w(f"\t{op} Y13, {y}, {y}")
        w(f"\tVEXTRACTF128 $1, {y}, X13")
        w(f"\t{op} X13, {x}, {x}")
        w(f"\tVPERMILPS $0x4e, {x}, X13")
        w(f"\t{op} X13, {x}, {x}")
        w(f"\tVPERMILPS $0xb1, {x}, X13")
        w(f"\t{op} X13, {x}, {x}")
        w(f"\tVMOVSS {x}, {ret}(FP)")
    w("\tVZEROUPPER")
    w("\tRET\n")

zero_acc = ("Z0", ["VPXORD Z0, Z0, Z0"], "VADDPS Z1, Z0, {K}Z0", "VADDPS")

func("dotAVX512", "dotAVX512(a, b *float32, n int) float32", "0-28",
     [("SI", "a", 0, "q"), ("DI", "b", 8, "q"), ("CX", "n", 16, "q")],
     [("SI", "Z2"), ("DI", "Z3")], [], ["VMULPS Z2, Z3, Z1"], acc=zero_acc, ret="ret+24")
func("sumSqAVX512", "sumSqAVX512(x *float32, n int) float32", "0-20",
     [("SI", "x", 0, "q"), ("CX", "n", 8, "q")],
     [("SI", "Z2")], [], ["VMULPS Z2, Z2, Z1"], acc=zero_acc, ret="ret+16")
func("dot3AVX512", "dot3AVX512(x, y, z *float32, n int) float32", "0-36",
     [("SI", "x", 0, "q"), ("DI", "y", 8, "q"), ("DX", "z", 16, "q"), ("CX", "n", 24, "q")],
     [("SI", "Z2"), ("DI", "Z3"), ("DX", "Z4")], [], ["VMULPS Z2, Z3, Z1", "VMULPS Z4, Z1, Z1"], acc=zero_acc, ret="ret+32")
# max: masked lanes keep the accumulator (merge masking).
func("maxAVX512", "maxAVX512(x *float32, n int) float32", "0-20",
     [("SI", "x", 0, "q"), ("CX", "n", 8, "q")],
     [("SI", "Z1")], [], [],
     acc=("Z0", ["MOVL $0xff800000, R14", "VPBROADCASTD R14, Z0"], "VMAXPS Z1, Z0, {K}Z0", "VMAXPS"), ret="ret+16")
func("axpyAVX512", "axpyAVX512(alpha float32, x, y *float32, n int)", "0-32",
     [("Z8", "alpha", 0, "s"), ("SI", "x", 8, "q"), ("DI", "y", 16, "q"), ("CX", "n", 24, "q")],
     [("SI", "Z1"), ("DI", "Z2")], [("DI", "Z2")], ["VFMADD231PS Z1, Z8, Z2"])
func("scaleAVX512", "scaleAVX512(alpha float32, x *float32, n int)", "0-24",
     [("Z8", "alpha", 0, "s"), ("SI", "x", 8, "q"), ("CX", "n", 16, "q")],
     [("SI", "Z1")], [("SI", "Z1")], ["VMULPS Z8, Z1, Z1"])
# y = x*s*g (same association as the reference: (x*s)*g).
func("mulScaleAVX512", "mulScaleAVX512(y, x, gain *float32, s float32, n int)", "0-40",
     [("DI", "y", 0, "q"), ("SI", "x", 8, "q"), ("DX", "gain", 16, "q"), ("Z8", "s", 24, "s"), ("CX", "n", 32, "q")],
     [("SI", "Z1"), ("DX", "Z2")], [("DI", "Z1")], ["VMULPS Z8, Z1, Z1", "VMULPS Z2, Z1, Z1"])
# dx = rs*g*dy - x*c ; dg += x*rs*dy
func("rmsBwdAVX512", "rmsBwdAVX512(dx, dg, dy, x, gain *float32, rs, c float32, n int)", "0-56",
     [("DI", "dx", 0, "q"), ("R8", "dg", 8, "q"), ("SI", "dy", 16, "q"), ("DX", "x", 24, "q"), ("R9", "gain", 32, "q"),
      ("Z8", "rs", 40, "s"), ("Z9", "c", 44, "s"), ("CX", "n", 48, "q")],
     [("SI", "Z1"), ("DX", "Z2"), ("R9", "Z3"), ("R8", "Z4")], [("DI", "Z5"), ("R8", "Z4")],
     ["VMULPS Z8, Z2, Z6",            # x*rs
      "VFMADD231PS Z1, Z6, Z4",       # dg += x*rs*dy
      "VMULPS Z3, Z1, Z5",            # g*dy
      "VMULPS Z8, Z5, Z5",            # rs*g*dy
      "VFNMADD231PS Z9, Z2, Z5"])     # - x*c
# x = exp(x - mx), returns the sum.
func("expSubSumAVX512", "expSubSumAVX512(x *float32, mx float32, n int) float32", "0-28",
     [("SI", "x", 0, "q"), ("Z8", "mx", 8, "s"), ("CX", "n", 16, "q")],
     [("SI", "Z2")], [("SI", "Z1")], ["VSUBPS Z8, Z2, Z2"] + exp("Z2", "Z1"),
     setup=[], acc=("Z0", ["VPXORD Z0, Z0, Z0"], "VADDPS Z1, Z0, {K}Z0", "VADDPS"), ret="ret+24")

def sigmoid(a, s, t):
    # s = 1/(1+exp(-a)), t scratch
    return [f"VPXORD {t}, {t}, {t}", f"VSUBPS {a}, {t}, {t}"] + exp(t, s) + \
           [f"VADDPS Z27, {s}, {s}", f"VDIVPS {s}, Z27, {s}"]

func("swigluAVX512", "swigluAVX512(h, a, b *float32, n int)", "0-32",
     [("DI", "h", 0, "q"), ("SI", "a", 8, "q"), ("DX", "b", 16, "q"), ("CX", "n", 24, "q")],
     [("SI", "Z1"), ("DX", "Z2")], [("DI", "Z3")],
     sigmoid("Z1", "Z3", "Z4") + ["VMULPS Z1, Z3, Z3", "VMULPS Z2, Z3, Z3"])
# da = dh*b*dsilu, dsilu = s*(1 + a*(1-s)); db = dh*silu
func("swigluBwdAVX512", "swigluBwdAVX512(da, db, dh, a, b *float32, n int)", "0-48",
     [("DI", "da", 0, "q"), ("R8", "db", 8, "q"), ("DX", "dh", 16, "q"), ("SI", "a", 24, "q"), ("R9", "b", 32, "q"), ("CX", "n", 40, "q")],
     [("DX", "Z1"), ("SI", "Z2"), ("R9", "Z3")], [("DI", "Z5"), ("R8", "Z6")],
     sigmoid("Z2", "Z4", "Z5") +
     ["VMULPS Z2, Z4, Z6",        # silu = a*s
      "VSUBPS Z4, Z27, Z5",       # 1-s
      "VFMADD213PS Z27, Z2, Z5",  # a*(1-s) + 1
      "VMULPS Z4, Z5, Z5",        # dsilu
      "VMULPS Z3, Z1, Z7",        # dh*b
      "VMULPS Z7, Z5, Z5",        # da
      "VMULPS Z1, Z6, Z6"])       # db = dh*silu
# v1' = x1*c - x2*s ; v2' = x2*c + x1*s  (s pre-multiplied by sign)
func("ropeAVX512", "ropeAVX512(v1, v2, c, s *float32, sign float32, n int)", "0-48",
     [("DI", "v1", 0, "q"), ("R8", "v2", 8, "q"), ("DX", "c", 16, "q"), ("SI", "s", 24, "q"), ("Z8", "sign", 32, "s"), ("CX", "n", 40, "q")],
     [("DI", "Z1"), ("R8", "Z2"), ("DX", "Z3"), ("SI", "Z4")], [("DI", "Z5"), ("R8", "Z6")],
     ["VMULPS Z8, Z4, Z4",
      "VMULPS Z3, Z1, Z5", "VMULPS Z4, Z2, Z7", "VSUBPS Z7, Z5, Z5",
      "VMULPS Z3, Z2, Z6", "VMULPS Z4, Z1, Z7", "VADDPS Z7, Z6, Z6"])
# AdamW with the reference's operation order; k = {lr, b1, 1-b1, b2, 1-b2, eps, wd, bc1, bc2}.
w("// func adamwAVX512(p, grad, m, v *float32, n int, k *[9]float32)")
func_args = [("DI", "p", 0, "q"), ("SI", "grad", 8, "q"), ("DX", "m", 16, "q"), ("R8", "v", 24, "q"), ("CX", "n", 32, "q"), ("R9", "k", 40, "q")]
setup = ["VBROADCASTSS %d(R9), Z%d" % (4*i, 8+i) for i in range(9)]
func("adamwAVX512", "adamwAVX512(p, grad, m, v *float32, n int, k *[9]float32)", "0-48", func_args,
     [("DI", "Z1"), ("SI", "Z2"), ("DX", "Z3"), ("R8", "Z4")], [("DX", "Z3"), ("R8", "Z4"), ("DI", "Z1")],
     ["VMULPS Z9, Z3, Z3", "VMULPS Z10, Z2, Z5", "VADDPS Z5, Z3, Z3",      # m = b1*m + (1-b1)*g
      "VMULPS Z11, Z4, Z4", "VMULPS Z12, Z2, Z5", "VMULPS Z2, Z5, Z5", "VADDPS Z5, Z4, Z4",  # v = b2*v + (1-b2)*g*g
      "VDIVPS Z15, Z3, Z5",     # mh = m/bc1
      "VDIVPS Z16, Z4, Z6",     # vh = v/bc2
      "VSQRTPS Z6, Z6", "VADDPS Z13, Z6, Z6", "VDIVPS Z6, Z5, Z5",  # mh/(sqrt(vh)+eps)
      "VMULPS Z14, Z1, Z6", "VADDPS Z6, Z5, Z5", "VMULPS Z8, Z5, Z5", "VSUBPS Z5, Z1, Z1"],
     setup=setup)

src = "\n".join(out) + "\n"
# The exp-using functions need the constants: inject after their arg loads.
for fn in ("expSubSumAVX512", "swigluAVX512", "swigluBwdAVX512"):
    marker = f"{fn}_loop:"
    loads = "\n".join("\tVBROADCASTSS expc<>+%d(SB), Z%d" % (4*i, 16+i) for i in range(len(consts)))
    src = src.replace(marker, loads + "\n" + marker, 1)
open("../elem_amd64.s", "w").write(src)
