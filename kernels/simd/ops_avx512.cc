// lattice's vector loops compiled for the avx512 level (kernels/simd.h says why and how).
#include "kernels/simd.h"
#if defined(LATTICE_SIMD_X86)
// Every header the shared source needs comes first, compiled for the build's own target: only
// the code of ops.inl below gets the level's instructions.
#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/adamw.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/status.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#define LATTICE_SIMD_NS avx512
#define LATTICE_SIMD_LANES 16  // floats per vector register
#define LATTICE_SIMD_LEVEL kAvx512
#define LATTICE_SIMD_TABLE kSimdOpsAvx512
#include "kernels/simd/ops.inl"
#pragma GCC pop_options
#endif  // LATTICE_SIMD_X86
