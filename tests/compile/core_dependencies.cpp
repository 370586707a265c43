// The core umbrella header must stay free of Eigen, JSON and utf8proc (cheap to include).
#include <engram/engram.hpp>

#if defined(NLOHMANN_JSON_VERSION_MAJOR)
#error "<engram/engram.hpp> must not include nlohmann/json"
#endif
#if defined(UTF8PROC_VERSION_MAJOR)
#error "<engram/engram.hpp> must not include utf8proc"
#endif
#if defined(EIGEN_WORLD_VERSION)
#error "<engram/engram.hpp> must not include Eigen"
#endif

static_assert(engram::hash_family<engram::multiply_xor_family>);
