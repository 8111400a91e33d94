// lattice's vector loops compiled for the avx2 level (kernels/simd.h says why and how).
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
#pragma GCC target("avx2,fma")
#define LATTICE_SIMD_NS avx2
#define LATTICE_SIMD_LANES 8  // floats per vector register
#define LATTICE_SIMD_LEVEL kAvx2
#define LATTICE_SIMD_TABLE kSimdOpsAvx2
#include "kernels/simd/ops.inl"
#pragma GCC pop_options
#endif  // LATTICE_SIMD_X86
