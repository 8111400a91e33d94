// lattice's vector loops compiled for the baseline level (kernels/simd.h says why and how).

// Every header the shared source needs comes first, compiled for the build's own target: only
// the code of ops.inl below gets the level's instructions.
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/adamw.h"
#include "kernels/math_cpu.h"
#include "kernels/simd.h"
#include "runtime/status.h"
#define LATTICE_SIMD_NS baseline
#define LATTICE_SIMD_LANES 4  // floats per vector register
#define LATTICE_SIMD_LEVEL kBaseline
#define LATTICE_SIMD_TABLE kSimdOpsBaseline
#include "kernels/simd/ops.inl"
