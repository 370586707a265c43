// Catch2 v2 needs one TU that defines main; v3 ships Catch2WithMain instead.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
