//go:build amd64 && !purego

#include "textflag.h"

// func packGatherAVX512(dst, src *float32, idx *[32]int32, k int, rowMask, storeMask uint32)
// For p in [0, k): dst[p*w + r] = src[idx[r] + p] for the rows set in
// rowMask (others 0), storing the w lanes set in storeMask (w <= 32).
TEXT ·packGatherAVX512(SB), NOSPLIT, $0-40
	MOVQ    dst+0(FP), DI
	MOVQ    src+8(FP), SI
	MOVQ    idx+16(FP), AX
	MOVQ    k+24(FP), CX
	MOVL    rowMask+32(FP), BX
	MOVL    storeMask+36(FP), DX
	VMOVDQU32 (AX), Z30
	VMOVDQU32 64(AX), Z31
	KMOVW   BX, K1
	SHRL    $16, BX
	KMOVW   BX, K2
	KMOVW   DX, K3
	// Bytes per packed row: 4 * popcount(storeMask) with storeMask a low run.
	POPCNTL DX, R8
	SHLQ    $2, R8
	SHRL    $16, DX
	KMOVW   DX, K4
	TESTL   DX, DX
	JNE     wide
	TESTQ   CX, CX
	JEQ     done

narrow:
	VPXORD  Z0, Z0, Z0
	KMOVW   K1, K5
	VGATHERDPS (SI)(Z30*4), K5, Z0
	VMOVUPS Z0, K3, (DI)
	ADDQ    $4, SI
	ADDQ    R8, DI
	DECQ    CX
	JNE     narrow
	JMP     done

wide:
	TESTQ   CX, CX
	JEQ     done

wideloop:
	VPXORD  Z0, Z0, Z0
	VPXORD  Z1, Z1, Z1
	KMOVW   K1, K5
	KMOVW   K2, K6
	VGATHERDPS (SI)(Z30*4), K5, Z0
	VGATHERDPS (SI)(Z31*4), K6, Z1
	VMOVUPS Z0, K3, (DI)
	VMOVUPS Z1, K4, 64(DI)
	ADDQ    $4, SI
	ADDQ    R8, DI
	DECQ    CX
	JNE     wideloop

done:
	VZEROUPPER
	RET

// func packRowsAVX512(dst, src *float32, ld, k int, mask uint32, w int)
// For p in [0, k): dst[p*w + c] = src[p*ld + c] for the columns set in mask
// (a low run of bits), zero for the other columns below w. w is at most 16,
// or exactly 32. ld is in elements.
TEXT ·packRowsAVX512(SB), NOSPLIT, $0-48
	MOVQ    dst+0(FP), DI
	MOVQ    src+8(FP), SI
	MOVQ    ld+16(FP), DX
	SHLQ    $2, DX
	MOVQ    k+24(FP), CX
	MOVL    mask+32(FP), BX
	MOVQ    w+40(FP), R8
	KMOVW   BX, K1
	SHRL    $16, BX
	KMOVW   BX, K2
	KXNORW  K3, K3, K3
	MOVQ    R8, R9
	SHLQ    $2, R9
	CMPQ    R8, $16
	JGT     rwide
	// Store mask: low w bits.
	MOVL    $1, R10
	MOVQ    R8, CX
	SHLL    CX, R10
	DECL    R10
	KMOVW   R10, K3
	MOVQ    k+24(FP), CX
	TESTQ   CX, CX
	JEQ     rdone

rnarrow:
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS Z0, K3, (DI)
	ADDQ    DX, SI
	ADDQ    R9, DI
	DECQ    CX
	JNE     rnarrow
	JMP     rdone

rwide:
	TESTQ   CX, CX
	JEQ     rdone

rwideloop:
	VMOVUPS.Z (SI), K1, Z0
	VMOVUPS.Z 64(SI), K2, Z1
	VMOVUPS Z0, (DI)
	VMOVUPS Z1, 64(DI)
	ADDQ    DX, SI
	ADDQ    R9, DI
	DECQ    CX
	JNE     rwideloop

rdone:
	VZEROUPPER
	RET

// func packRowsMultiAVX512(dst, src *float32, ld, k, w, np, pstride int)
// Packs np full panels of w columns (w <= 16 or w == 32) at once, walking
// the source rows in order: for p in [0, k), q in [0, np), c in [0, w):
// dst[q*pstride + p*w + c] = src[p*ld + q*w + c]. Strides in elements.
TEXT ·packRowsMultiAVX512(SB), NOSPLIT, $0-56
	MOVQ    dst+0(FP), DI
	MOVQ    src+8(FP), SI
	MOVQ    ld+16(FP), DX
	SHLQ    $2, DX
	MOVQ    k+24(FP), R12
	MOVQ    w+32(FP), R8
	MOVQ    np+40(FP), R13
	MOVQ    pstride+48(FP), R10
	SHLQ    $2, R10
	MOVQ    R8, R9
	SHLQ    $2, R9            // R9 = w*4: source step between panels, dest step between rows
	TESTQ   R12, R12
	JEQ     mdone
	TESTQ   R13, R13
	JEQ     mdone
	CMPQ    R8, $16
	JGT     mwide
	MOVL    $1, R11
	MOVQ    R8, CX
	SHLL    CX, R11
	DECL    R11
	KMOVW   R11, K1

mnarrow:
	MOVQ    SI, AX
	MOVQ    DI, BX
	MOVQ    R13, CX

mnarrowq:
	VMOVUPS.Z (AX), K1, Z0
	VMOVUPS Z0, K1, (BX)
	ADDQ    R9, AX
	ADDQ    R10, BX
	DECQ    CX
	JNE     mnarrowq
	ADDQ    DX, SI
	ADDQ    R9, DI
	DECQ    R12
	JNE     mnarrow
	JMP     mdone

mwide:
	MOVQ    SI, AX
	MOVQ    DI, BX
	MOVQ    R13, CX

mwideq:
	VMOVUPS (AX), Z0
	VMOVUPS 64(AX), Z1
	VMOVUPS Z0, (BX)
	VMOVUPS Z1, 64(BX)
	ADDQ    R9, AX
	ADDQ    R10, BX
	DECQ    CX
	JNE     mwideq
	ADDQ    DX, SI
	ADDQ    R9, DI
	DECQ    R12
	JNE     mwide

mdone:
	VZEROUPPER
	RET
