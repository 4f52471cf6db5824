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

// func packT16AVX512(dst, src *float32, ld, nblk, w, rows int, mask uint32)
// Transposing pack by in-register 16x16 transposes: for p in [0, 16*nblk)
// and r in [0, rows): dst[p*w + r] = src[r*ld + p], lanes rows..15 zero,
// storing the lanes set in mask (a low run of bits). rows is 12 or 16. ld
// and w are in elements. Callers check the bounds.
TEXT ·packT16AVX512(SB), NOSPLIT, $0-52
	MOVQ    dst+0(FP), DI
	MOVQ    src+8(FP), SI
	MOVQ    ld+16(FP), R8
	SHLQ    $2, R8
	MOVQ    nblk+24(FP), CX
	MOVQ    w+32(FP), R9
	SHLQ    $2, R9
	MOVQ    rows+40(FP), DX
	MOVL    mask+48(FP), BX
	KMOVW   BX, K1
	// R10 = 16 rows of dst in bytes.
	MOVQ    R9, R10
	SHLQ    $4, R10
	TESTQ   CX, CX
	JEQ     tdone

tloop:
	MOVQ    SI, AX
	VMOVUPS (AX), Z0
	ADDQ    R8, AX
	VMOVUPS (AX), Z1
	ADDQ    R8, AX
	VMOVUPS (AX), Z2
	ADDQ    R8, AX
	VMOVUPS (AX), Z3
	ADDQ    R8, AX
	VMOVUPS (AX), Z4
	ADDQ    R8, AX
	VMOVUPS (AX), Z5
	ADDQ    R8, AX
	VMOVUPS (AX), Z6
	ADDQ    R8, AX
	VMOVUPS (AX), Z7
	ADDQ    R8, AX
	VMOVUPS (AX), Z8
	ADDQ    R8, AX
	VMOVUPS (AX), Z9
	ADDQ    R8, AX
	VMOVUPS (AX), Z10
	ADDQ    R8, AX
	VMOVUPS (AX), Z11
	ADDQ    R8, AX
	CMPQ    DX, $16
	JNE     tzero
	VMOVUPS (AX), Z12
	ADDQ    R8, AX
	VMOVUPS (AX), Z13
	ADDQ    R8, AX
	VMOVUPS (AX), Z14
	ADDQ    R8, AX
	VMOVUPS (AX), Z15
	JMP     ttrans
tzero:
	VPXORD  Z12, Z12, Z12
	VPXORD  Z13, Z13, Z13
	VPXORD  Z14, Z14, Z14
	VPXORD  Z15, Z15, Z15
ttrans:
	VUNPCKLPS Z1, Z0, Z16
	VUNPCKHPS Z1, Z0, Z17
	VUNPCKLPS Z3, Z2, Z18
	VUNPCKHPS Z3, Z2, Z19
	VUNPCKLPS Z5, Z4, Z20
	VUNPCKHPS Z5, Z4, Z21
	VUNPCKLPS Z7, Z6, Z22
	VUNPCKHPS Z7, Z6, Z23
	VUNPCKLPS Z9, Z8, Z24
	VUNPCKHPS Z9, Z8, Z25
	VUNPCKLPS Z11, Z10, Z26
	VUNPCKHPS Z11, Z10, Z27
	VUNPCKLPS Z13, Z12, Z28
	VUNPCKHPS Z13, Z12, Z29
	VUNPCKLPS Z15, Z14, Z30
	VUNPCKHPS Z15, Z14, Z31
	VUNPCKLPD Z18, Z16, Z0
	VUNPCKHPD Z18, Z16, Z1
	VUNPCKLPD Z19, Z17, Z2
	VUNPCKHPD Z19, Z17, Z3
	VUNPCKLPD Z22, Z20, Z4
	VUNPCKHPD Z22, Z20, Z5
	VUNPCKLPD Z23, Z21, Z6
	VUNPCKHPD Z23, Z21, Z7
	VUNPCKLPD Z26, Z24, Z8
	VUNPCKHPD Z26, Z24, Z9
	VUNPCKLPD Z27, Z25, Z10
	VUNPCKHPD Z27, Z25, Z11
	VUNPCKLPD Z30, Z28, Z12
	VUNPCKHPD Z30, Z28, Z13
	VUNPCKLPD Z31, Z29, Z14
	VUNPCKHPD Z31, Z29, Z15
	VSHUFF32X4 $0x88, Z4, Z0, Z16
	VSHUFF32X4 $0xdd, Z4, Z0, Z20
	VSHUFF32X4 $0x88, Z5, Z1, Z17
	VSHUFF32X4 $0xdd, Z5, Z1, Z21
	VSHUFF32X4 $0x88, Z6, Z2, Z18
	VSHUFF32X4 $0xdd, Z6, Z2, Z22
	VSHUFF32X4 $0x88, Z7, Z3, Z19
	VSHUFF32X4 $0xdd, Z7, Z3, Z23
	VSHUFF32X4 $0x88, Z12, Z8, Z24
	VSHUFF32X4 $0xdd, Z12, Z8, Z28
	VSHUFF32X4 $0x88, Z13, Z9, Z25
	VSHUFF32X4 $0xdd, Z13, Z9, Z29
	VSHUFF32X4 $0x88, Z14, Z10, Z26
	VSHUFF32X4 $0xdd, Z14, Z10, Z30
	VSHUFF32X4 $0x88, Z15, Z11, Z27
	VSHUFF32X4 $0xdd, Z15, Z11, Z31
	VSHUFF32X4 $0x88, Z24, Z16, Z0
	VSHUFF32X4 $0xdd, Z24, Z16, Z8
	VSHUFF32X4 $0x88, Z25, Z17, Z1
	VSHUFF32X4 $0xdd, Z25, Z17, Z9
	VSHUFF32X4 $0x88, Z26, Z18, Z2
	VSHUFF32X4 $0xdd, Z26, Z18, Z10
	VSHUFF32X4 $0x88, Z27, Z19, Z3
	VSHUFF32X4 $0xdd, Z27, Z19, Z11
	VSHUFF32X4 $0x88, Z28, Z20, Z4
	VSHUFF32X4 $0xdd, Z28, Z20, Z12
	VSHUFF32X4 $0x88, Z29, Z21, Z5
	VSHUFF32X4 $0xdd, Z29, Z21, Z13
	VSHUFF32X4 $0x88, Z30, Z22, Z6
	VSHUFF32X4 $0xdd, Z30, Z22, Z14
	VSHUFF32X4 $0x88, Z31, Z23, Z7
	VSHUFF32X4 $0xdd, Z31, Z23, Z15
	MOVQ    DI, AX
	VMOVUPS Z0, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z1, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z2, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z3, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z4, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z5, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z6, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z7, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z8, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z9, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z10, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z11, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z12, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z13, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z14, K1, (AX)
	ADDQ    R9, AX
	VMOVUPS Z15, K1, (AX)
	ADDQ    R10, DI
	ADDQ    $64, SI
	DECQ    CX
	JNE     tloop

tdone:
	VZEROUPPER
	RET
