// The default layer needs Eigen only: no oneDNN, no OpenMP, no JSON (engram::onednn and
// engram::io are optional targets).
#include <engram/layer.hpp>

#if defined(DNNL_VERSION_MAJOR) || defined(ONEAPI_DNNL_DNNL_HPP)
#error "<engram/layer.hpp> must not include oneDNN"
#endif
#if defined(_OMP_H)
#error "<engram/layer.hpp> must not include omp.h"
#endif
#if defined(NLOHMANN_JSON_VERSION_MAJOR)
#error "<engram/layer.hpp> must not include nlohmann/json"
#endif

static_assert(engram::matmul_backend<engram::host_matmul>);
static_assert(std::is_same_v<engram::layer_policies::matmul_type, engram::host_matmul>);
