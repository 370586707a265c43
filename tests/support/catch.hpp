#pragma once
// Picks Catch2 v3's header when present, else v2's single header (Debian 12 ships 2.13).
#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#define ENGRAM_CATCH_V3 1
#else
#include <catch2/catch.hpp>
#endif
