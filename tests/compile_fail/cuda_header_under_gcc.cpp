// A CUDA header included by the host compiler must stop with one clear #error.
#include <engram/cuda/engram.cuh>
