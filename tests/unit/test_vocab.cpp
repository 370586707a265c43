// Canonical tables: validation, mapping, and safetensors round trips.
#include "support/catch.hpp"

#include <engram/io/vocab_io.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace {
std::string data(const char* name) { return std::string(ENGRAM_TEST_DATA_DIR) + "/" + name; }
} // namespace

TEST_CASE("from_lookup validates density and range", "[vocab]") {
    const auto t = engram::canonical_table::from_lookup({0, 1, 0, 2, 1});
    CHECK(t.vocab_size() == 5);
    CHECK(t.canonical_size() == 3);
    CHECK(t(3) == 2);
    CHECK(t.canonical_pad_id(4) == 1);
    CHECK_THROWS_AS(t(5), engram::input_error);
    CHECK_THROWS_AS(t(-1), engram::input_error);
    CHECK_THROWS_AS(t.canonical_pad_id(9), engram::config_error);
    CHECK_THROWS_AS(engram::canonical_table::from_lookup({}), engram::config_error);
    CHECK_THROWS_AS(engram::canonical_table::from_lookup({0, -1}), engram::config_error);
    CHECK_THROWS_AS(engram::canonical_table::from_lookup({0, 2, 2}), engram::config_error);  // 1 never produced
    CHECK_THROWS_AS(engram::canonical_table::from_lookup({0, 1, 99}), engram::config_error); // beyond V
    std::vector<engram::token_id> out(3);
    t.map(std::vector<engram::token_id>{4, 3, 0}, out);
    CHECK(out == std::vector<engram::token_id>{1, 2, 0});
    try {
        t.map(std::vector<engram::token_id>{4, 7, 0}, out);
        FAIL("no error");
    } catch (const engram::input_error& e) {
        CHECK(std::string(e.what()).find("token id 7 at position 1") != std::string::npos);
    }
}

TEST_CASE("canonical tables load from safetensors and round trip", "[vocab]") {
    const auto golden = engram::load_canonical_table(std::filesystem::path(data("hash_reference_default.safetensors")));
    CHECK(golden.vocab_size() == 50000);
    CHECK(golden.canonical_size() == 27370);
    const auto path = std::filesystem::temp_directory_path() / "engram_vocab_roundtrip.safetensors";
    engram::save_canonical_table(golden, path);
    CHECK(engram::load_canonical_table(path) == golden);
    std::filesystem::remove(path);

    // A float tensor, a matrix, an inconsistent size and a non-dense table are format errors.
    auto bad = [](auto&& fill) {
        engram::safetensors_writer w;
        fill(w);
        return engram::safetensors_file::from_bytes(w.to_bytes());
    };
    CHECK_THROWS_AS(engram::load_canonical_table(bad([](auto& w) {
                        w.add("lookup", {2}, std::vector<float>{0, 1});
                    })),
                    engram::format_error);
    CHECK_THROWS_AS(engram::load_canonical_table(bad([](auto& w) {
                        w.add("lookup", {1, 2}, std::vector<std::int64_t>{0, 1});
                    })),
                    engram::format_error);
    CHECK_THROWS_AS(engram::load_canonical_table(bad([](auto& w) {
                        w.add("lookup", {2}, std::vector<std::int64_t>{0, 1});
                        w.set_metadata("canonical_vocab_size", "3");
                    })),
                    engram::format_error);
    CHECK_THROWS_AS(engram::load_canonical_table(bad([](auto& w) {
                        w.add("lookup", {2}, std::vector<std::int64_t>{0, 5});
                    })),
                    engram::format_error);
    CHECK_THROWS_AS(
        engram::load_canonical_table(bad([](auto& w) { w.add("other", {1}, std::vector<std::int64_t>{0}); })),
        engram::format_error);
}
