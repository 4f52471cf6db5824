#!/usr/bin/env python3
"""Writes ../kern_amd64.s: the SGEMM micro-kernels (see ../gemm.go).

Run from this directory: python3 kern.py. The output is committed; go vet's
asmdecl checks it against kern_amd64.go.
"""
out = []
w = out.append
w("//go:build amd64 && !purego\n")
w('#include "textflag.h"\n')
w("// Micro-kernels of the packed SGEMM (see gemm.go for the panel layout).")
w("// Produced by asmgen/kern.py.")
w("// func sgemmKern12x32AVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)")
w("// Accumulators: Z0..Z23 (row r in Z(2r), Z(2r+1)); B row in Z24, Z25;")
w("// broadcasts of A in Z26..Z31.")
w("TEXT ·sgemmKern12x32AVX512(SB), NOSPLIT, $0-48")
w("\tMOVQ k+0(FP), CX\n\tMOVQ a+8(FP), AX\n\tMOVQ b+16(FP), BX\n\tMOVQ c+24(FP), DX\n\tMOVQ ldc+32(FP), R8\n\tSHLQ $2, R8")
# Prefetch the C tile while the k loop runs.
w("\tMOVQ DX, R11")
for r in range(12):
    w("\tPREFETCHT0 (R11)\n\tPREFETCHT0 64(R11)")
    if r < 11:
        w("\tADDQ R8, R11")
for i in range(24):
    w(f"\tVPXORD Z{i}, Z{i}, Z{i}")
w("\tTESTQ CX, CX\n\tJEQ store512")


def step512(aoff, boff):
    w(f"\tVMOVUPS {boff}(BX), Z24")
    w(f"\tVMOVUPS {boff+64}(BX), Z25")
    for r in range(12):
        t = 26 + r % 6
        w(f"\tVBROADCASTSS {aoff+4*r}(AX), Z{t}")
        w(f"\tVFMADD231PS Z24, Z{t}, Z{2*r}")
        w(f"\tVFMADD231PS Z25, Z{t}, Z{2*r+1}")


# k loop unrolled by 2.
w("\tCMPQ CX, $2\n\tJLT tail512")
w("loop512:")
w("\tPREFETCHT0 512(BX)")
step512(0, 0)
w("\tPREFETCHT0 640(BX)")
step512(48, 128)
w("\tADDQ $96, AX\n\tADDQ $256, BX\n\tSUBQ $2, CX\n\tCMPQ CX, $2\n\tJGE loop512")
w("tail512:")
w("\tTESTQ CX, CX\n\tJEQ store512")
step512(0, 0)
w("\tADDQ $48, AX\n\tADDQ $128, BX")
w("store512:")
w("\tVBROADCASTSS alpha+40(FP), Z24")
w("\tVBROADCASTSS beta+44(FP), Z25")
# beta == +0 or -0: C is written without being read (it may hold NaN).
w("\tMOVL beta+44(FP), R9\n\tANDL $0x7fffffff, R9\n\tJNE beta512")
for r in range(12):
    for h in range(2):
        w(f"\tVMULPS Z24, Z{2*r+h}, Z{2*r+h}")
        w(f"\tVMOVUPS Z{2*r+h}, {64*h}(DX)")
    if r < 11:
        w("\tADDQ R8, DX")
w("\tVZEROUPPER\n\tRET")
w("beta512:")
for r in range(12):
    for h in range(2):
        w(f"\tVMULPS Z24, Z{2*r+h}, Z{2*r+h}")
        w(f"\tVFMADD231PS {64*h}(DX), Z25, Z{2*r+h}")
        w(f"\tVMOVUPS Z{2*r+h}, {64*h}(DX)")
    if r < 11:
        w("\tADDQ R8, DX")
w("\tVZEROUPPER\n\tRET\n")

w("// func sgemmKern6x16AVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)")
w("// Accumulators: Y0..Y11; B row in Y12, Y13; broadcasts in Y14, Y15.")
w("TEXT ·sgemmKern6x16AVX2(SB), NOSPLIT, $0-48")
w("\tMOVQ k+0(FP), CX\n\tMOVQ a+8(FP), AX\n\tMOVQ b+16(FP), BX\n\tMOVQ c+24(FP), DX\n\tMOVQ ldc+32(FP), R8\n\tSHLQ $2, R8")
for i in range(12):
    w(f"\tVXORPS Y{i}, Y{i}, Y{i}")
w("\tTESTQ CX, CX\n\tJEQ store2")
w("loop2:")
w("\tVMOVUPS (BX), Y12\n\tVMOVUPS 32(BX), Y13")
for r in range(6):
    t = 14 + r % 2
    w(f"\tVBROADCASTSS {4*r}(AX), Y{t}")
    w(f"\tVFMADD231PS Y12, Y{t}, Y{2*r}")
    w(f"\tVFMADD231PS Y13, Y{t}, Y{2*r+1}")
w("\tADDQ $24, AX\n\tADDQ $64, BX\n\tDECQ CX\n\tJNE loop2")
w("store2:")
w("\tVBROADCASTSS alpha+40(FP), Y12")
w("\tVBROADCASTSS beta+44(FP), Y13")
w("\tMOVL beta+44(FP), R9\n\tANDL $0x7fffffff, R9\n\tJNE beta2")
for r in range(6):
    for h in range(2):
        w(f"\tVMULPS Y12, Y{2*r+h}, Y{2*r+h}")
        w(f"\tVMOVUPS Y{2*r+h}, {32*h}(DX)")
    if r < 5:
        w("\tADDQ R8, DX")
w("\tVZEROUPPER\n\tRET")
w("beta2:")
for r in range(6):
    for h in range(2):
        w(f"\tVMULPS Y12, Y{2*r+h}, Y{2*r+h}")
        w(f"\tVFMADD231PS {32*h}(DX), Y13, Y{2*r+h}")
        w(f"\tVMOVUPS Y{2*r+h}, {32*h}(DX)")
    if r < 5:
        w("\tADDQ R8, DX")
w("\tVZEROUPPER\n\tRET")
open("../kern_amd64.s", "w").write("\n".join(out) + "\n")
