// Dense row storage and the gather into memory vectors, for float and bf16 rows.
#include "support/catch.hpp"

#include <engram/engram.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

TEMPLATE_TEST_CASE("dense table: shape, alignment, zero init, row views", "[storage]", float, engram::bfloat16) {
    STATIC_REQUIRE(engram::storage_policy<engram::dense_storage, TestType>);
    engram::dense_storage::table<TestType> small(10, 3);
    CHECK(small.rows() == 10);
    CHECK(small.dim() == 3);
    CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % 64 == 0);
    for (auto v : small.values()) CHECK(engram::to_float(v) == 0.0f);
    CHECK(small.row(4).data() == small.data() + 12);

    // Large tables are aligned for 2 MiB pages.
    engram::dense_storage::table<TestType> big((std::size_t{4} << 20) / sizeof(TestType) / 64, 64);
    CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % (std::size_t{2} << 20) == 0);
    big.row(big.rows() - 1)[63] = TestType{};

    auto moved = std::move(small);
    CHECK(moved.rows() == 10);
    CHECK(small.rows() == 0);

    CHECK_THROWS_AS(engram::dense_storage::table<TestType>(0, 4), engram::config_error);
    CHECK_THROWS_AS(engram::dense_storage::table<TestType>(SIZE_MAX / 2, 4), engram::config_error);
}

TEST_CASE("gather f32: memory vectors are the rows concatenated in head order", "[gather]") {
    const std::size_t rows = 1000, dim = 16;
    engram::dense_storage::table<float> table(rows, dim);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < dim; ++c) table.row(r)[c] = static_cast<float>(r) + 0.001f * static_cast<float>(c);
    std::mt19937_64 rng(3);
    const std::size_t batch = 2, seq = 7, heads = 5;
    std::vector<engram::row_id> ids(batch * seq * heads);
    for (auto& x : ids) x = static_cast<engram::row_id>(rng() % rows);
    std::vector<float> out(ids.size() * dim);
    engram::gather(table, std::span<const engram::row_id>(ids), std::span<float>(out));
    // Brute force: memory vector [b, t] = concat over heads of row ids[b, t, h].
    for (std::size_t bt = 0; bt < batch * seq; ++bt)
        for (std::size_t h = 0; h < heads; ++h)
            for (std::size_t c = 0; c < dim; ++c)
                REQUIRE(out[bt * heads * dim + h * dim + c] ==
                        table.row(static_cast<std::size_t>(ids[bt * heads + h]))[c]);
}

TEST_CASE("gather bf16 widens to float exactly", "[gather]") {
    engram::dense_storage::table<engram::bfloat16> table(50, 8);
    std::mt19937 rng(5);
    std::normal_distribution<float> dist;
    std::vector<float> ref(50 * 8);
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const auto b = engram::bfloat16::from_float(dist(rng));
        table.values()[i] = b;
        ref[i] = b.to_float();
    }
    const std::vector<engram::row_id> ids = {49, 0, 17, 17};
    std::vector<float> out(ids.size() * 8);
    engram::gather(table, std::span<const engram::row_id>(ids), std::span<float>(out));
    for (std::size_t i = 0; i < ids.size(); ++i)
        for (std::size_t c = 0; c < 8; ++c) CHECK(out[i * 8 + c] == ref[static_cast<std::size_t>(ids[i]) * 8 + c]);
}

TEST_CASE("bfloat16 rounds to nearest even like PyTorch", "[gather]") {
    auto bits = [](float f) { return engram::bfloat16::from_float(f).bits; };
    CHECK(bits(1.0f) == 0x3F80);
    CHECK(bits(-2.0f) == 0xC000);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
    CHECK(bits(1.00390625f) == 0x3F80);
    // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
    CHECK(bits(1.01171875f) == 0x3F82);
    CHECK(bits(1.0f + 0x1.0p-8f + 0x1.0p-16f) == 0x3F81); // above halfway rounds up
    CHECK(std::isinf(engram::bfloat16::from_float(INFINITY).to_float()));
    CHECK(std::isnan(engram::bfloat16::from_float(NAN).to_float()));
    CHECK(bits(3.4e38f) == 0x7F80); // rounds up to infinity
}

TEST_CASE("gather errors: bad row ids and sizes, nothing written", "[gather]") {
    engram::dense_storage::table<float> table(10, 4);
    std::vector<float> out(8, -1.0f);
    CHECK_THROWS_AS(engram::gather(table, std::span<const engram::row_id>(std::vector<engram::row_id>{1, 10}),
                                   std::span<float>(out)),
                    engram::input_error);
    CHECK_THROWS_AS(engram::gather(table, std::span<const engram::row_id>(std::vector<engram::row_id>{-1, 0}),
                                   std::span<float>(out)),
                    engram::input_error);
    CHECK(out[0] == -1.0f);
    CHECK_THROWS_AS(
        engram::gather(table, std::span<const engram::row_id>(std::vector<engram::row_id>{1}), std::span<float>(out)),
        engram::input_error);
}
