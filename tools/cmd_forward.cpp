// engram forward: runs the Engram layer of a case file (weights, ids, hidden states), with the
// embedding rows from the case, from a table file, and/or from a chosen storage tier.
#include "cli.hpp"
#include "forward_common.hpp"
#if ENGRAM_CLI_MPI
#include "forward_mpi.hpp"
#endif

#include <engram/io/table_file.hpp>
#include <engram/layer/checkpoint.hpp>
#include <engram/layer/dispatch.hpp>
#include <engram/model/hf_checkpoint.hpp>
#include <engram/storage/cached.hpp>
#include <engram/storage/mmap.hpp>
#include <engram/storage/sharded.hpp>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>

namespace engram_cli {

namespace {

using namespace fwd;

constexpr const char* usage =
    "engram forward CASE.safetensors -o OUT.safetensors [--stream] [--table TABLE.safetensors] "
    "[--storage dense|mmap|sharded:N|cached:BYTES|mpi[:heads]] [--weights f32|bf16|bf16_dot|int8] [--threads N] "
    "[--checkpoint DIR --layer L [--token-map FILE]]";

/// "dense", "mmap", "sharded:N" or "cached:BYTES" (BYTES may end in K, M or G: powers of 1024).
storage_choice parse_storage(const std::string& text) {
    storage_choice c;
    c.text = text;
    auto number = [&](const std::string& s, bool suffixes) -> std::size_t {
        std::size_t pos = 0;
        unsigned long long v = 0;
        try {
            v = std::stoull(s, &pos);
        } catch (const std::exception&) {
            throw usage_error("--storage " + text + ": '" + s + "' is not a number");
        }
        std::size_t mult = 1;
        if (suffixes && pos + 1 == s.size()) {
            switch (s[pos]) {
            case 'K':
            case 'k':
                mult = std::size_t{1} << 10;
                break;
            case 'M':
            case 'm':
                mult = std::size_t{1} << 20;
                break;
            case 'G':
            case 'g':
                mult = std::size_t{1} << 30;
                break;
            default:
                throw usage_error("--storage " + text + ": unknown size suffix in '" + s + "'");
            }
            ++pos;
        }
        if (pos != s.size() || v == 0 || s[0] == '-')
            throw usage_error("--storage " + text + ": '" + s + "' must be a positive number");
        if (v > (std::size_t{1} << 46) / mult) throw usage_error("--storage " + text + ": '" + s + "' is too large");
        return static_cast<std::size_t>(v) * mult;
    };
    if (text == "dense")
        c.kind = storage_choice::dense;
    else if (text == "mmap")
        c.kind = storage_choice::mmap;
    else if (text.rfind("sharded:", 0) == 0) {
        c.kind = storage_choice::sharded;
        c.shards = number(text.substr(8), false);
    } else if (text.rfind("cached:", 0) == 0) {
        c.kind = storage_choice::cached;
        c.bytes = number(text.substr(7), true);
    } else if (text == "mpi" || text == "mpi:rows" || text == "mpi:heads") {
        c.kind = storage_choice::mpi;
        c.by_head = text == "mpi:heads";
    } else {
        throw usage_error("--storage '" + text +
                          "': expected dense, mmap, sharded:N, cached:BYTES or mpi[:rows|:heads]");
    }
    return c;
}

template <class Layer, class Table>
void run_layer(const run_inputs<Layer>& in, const Table& table) {
    if (!in.stream) {
        in.layer.forward(table, in.ids, in.batch, in.seq, in.hidden, in.out, in.mask);
        return;
    }
    const auto& cfg = in.layer.config();
    const std::size_t mh = static_cast<std::size_t>(cfg.branches * cfg.hidden);
    for (std::size_t b = 0; b < in.batch; ++b) {
        auto state = in.layer.new_decode_state();
        for (std::size_t t = 0; t < in.seq; ++t) {
            const std::size_t i = b * in.seq + t;
            in.layer.decode_step(table, state, in.ids[i], std::span<const float>(in.hidden).subspan(i * mh, mh),
                                 std::span<float>(in.out).subspan(i * mh, mh), in.mask.empty() || in.mask[i] != 0);
        }
    }
}

/// Runs with rows from `src` put behind the chosen storage tier.
template <class Layer, class Source>
void run_tier(const run_inputs<Layer>& in, const Source& src, const storage_choice& choice, bool src_is_mapped) {
    switch (choice.kind) {
    case storage_choice::mpi: // run_mpi's, never a tier over one process's rows
        throw engram::unsupported_error("--storage " + choice.text + " is not a tier of one process");
    case storage_choice::mmap:
        if (!src_is_mapped)
            throw engram::unsupported_error("--storage mmap needs rows stored as F32 in the case file, or --table");
        run_layer(in, src);
        return;
    case storage_choice::dense:
        run_layer(in, dense_copy(src, 0, src.rows()));
        return;
    case storage_choice::sharded: {
        const auto bounds = engram::shard_bounds_by_rows(src.rows(), std::min(choice.shards, src.rows()));
        run_layer(in, engram::make_sharded_table(
                          std::span<const std::size_t>(bounds),
                          [&](std::size_t first, std::size_t count) { return dense_copy(src, first, first + count); }));
        return;
    }
    case storage_choice::cached: {
        engram::cached_table<Source> cache(std::shared_ptr<const Source>(&src, [](const Source*) {}), choice.bytes);
        run_layer(in, cache);
        std::cout << "cache: " << cache.hits() << " hits, " << cache.misses() << " misses (hit rate "
                  << 100.0 * cache.hit_rate() << "%)\n";
        return;
    }
    }
}

/// --storage mpi: the layer run by the MPI ranks (forward_mpi.hpp); rows from the table file or
/// from `slice(first, n)` of the case's rows. Returns false on ranks other than 0 (they write
/// nothing); `note` gets the traffic summary.
template <class Layer, class Slice>
bool run_mpi(const run_inputs<Layer>& in, const std::optional<std::string>& table_path, const storage_choice& choice,
             Slice&& slice, std::string& note) {
    if (in.stream) throw usage_error("--stream with --storage " + choice.text + ": the ranks run whole sequences");
#if ENGRAM_CLI_MPI
    on_every_rank("forward", [&] { note = forward_over_ranks(in, table_path, choice, slice); });
    return world().rank() == 0;
#else
    (void)table_path;
    (void)slice;
    (void)note;
    throw engram::unsupported_error("--storage " + choice.text +
                                    ": this engram was built without MPI (configure with -DENGRAM_MPI=ON)");
#endif
}

/// Runs a loaded layer on the case's ids and hidden states, with the rows from the case, a table
/// file or a storage tier, and writes `output`.
template <class Layer>
void run_case(const Layer& layer, const engram::safetensors_file& file, const std::string& case_path,
              const std::string& output, const std::optional<std::string>& table_path, const storage_choice& choice,
              const std::string& weights_note, bool stream) {
    const auto& cfg = layer.config();
    const auto ids = read_ids(file, "input_ids", 2);
    const auto& id_shape = file.at("input_ids").shape;
    const std::vector<std::int64_t> hidden_shape = {id_shape[0], id_shape[1], cfg.branches, cfg.hidden};
    const auto hidden = engram::detail::checkpoint_floats(file, "hidden_states", hidden_shape);
    std::vector<float> out(hidden.size());
    const run_inputs<Layer> in{
        layer, ids, hidden, out, static_cast<std::size_t>(id_shape[0]), static_cast<std::size_t>(id_shape[1]), stream};

    std::string source = table_path ? *table_path : std::string("the case");
    std::string note;
    if (choice.kind == storage_choice::mpi) {
        const auto slice = [&](std::size_t first, std::size_t n) {
            return dense_copy(layer.table(), first, first + n);
        };
        if (!run_mpi(in, table_path, choice, slice, note)) return;
    } else if (table_path) {
        const auto tf = engram::table_file::open(*table_path);
        check_table_matches(tf, layer);
        tf.visit_rows([&](const auto& rows) { run_tier(in, rows, choice, true); });
        source = *table_path + " (" + tf.codec() + ")";
    } else if (choice.kind == storage_choice::dense) {
        run_layer(in, layer.table());
    } else if (choice.kind == storage_choice::mmap &&
               file.at("multi_head_embedding.embedding.weight").type != engram::dtype::f32) {
        throw engram::unsupported_error("--storage mmap needs 'multi_head_embedding.embedding.weight' stored as F32");
    } else if (choice.kind == storage_choice::mmap) {
        const auto mapped =
            engram::mmap_storage::table<float>::from_safetensors(case_path, "multi_head_embedding.embedding.weight");
        run_tier(in, mapped, choice, true);
    } else {
        run_tier(in, layer.table(), choice, false);
    }

    engram::safetensors_writer writer;
    writer.add("output", hidden_shape, out);
    writer.set_metadata("config", engram::to_json(cfg).dump());
    writer.write(output);
    std::cout << "ran layer " << cfg.layer_id << " (orders 2.." << cfg.hash.max_ngram << ") on " << in.batch << " x "
              << in.seq << " tokens" << (in.stream ? " (streamed)" : "") << ", rows from " << source << " via "
              << choice.text << note << weights_note << "; wrote " << output << '\n';
}

/// What `engram forward` was asked for, besides the case.
struct forward_options {
    std::optional<std::string> table_path;
    storage_choice choice;
    std::optional<engram::weight_format> weights;
    std::string weights_note;
    std::size_t threads = 1;
    bool stream = false;
    std::optional<std::string> checkpoint, token_map;
    std::optional<std::int64_t> layer;
};

/// DeepSeek-V4.1: the case's `input_ids`, `hidden_states` (BF16 [B, T, hc, dim]) and optional
/// `token_mask` through the case's own layer or a checkpoint directory's; writes `output`
/// (BF16). Rows are served in place (--storage mmap, the default), from row-range slices
/// (sharded:N) or behind a cache (cached:BYTES), or from a table file (--table).
void run_v41(const std::shared_ptr<const engram::safetensors_file>& file, const std::string& output,
             const forward_options& o) {
    namespace v41 = engram::deepseek_v41;
    v41::config cfg;
    engram::canonical_table vocab;
    v41::tensor_set case_tensors;
    std::optional<v41::checkpoint> ck;
    std::int64_t layer_id = 0;
    if (o.checkpoint) {
        ck = v41::checkpoint::open(*o.checkpoint,
                                   {o.token_map ? std::optional<std::filesystem::path>(*o.token_map) : std::nullopt});
        cfg = ck->cfg();
        vocab = ck->vocab();
        if (!o.layer)
            throw usage_error("--checkpoint needs --layer L (one of " + v41::config::list_text(cfg.layer_ids) + ")");
        layer_id = *o.layer;
    } else {
        cfg = v41::config::from_json(read_config(*file));
        vocab = o.token_map ? engram::load_canonical_table(*o.token_map) : engram::load_canonical_table(*file);
        case_tensors.add_all(file);
        if (!o.layer && !cfg.layer_id)
            throw engram::format_error(file->path().string() + ": the config has no 'layer_id' (give --layer L)");
        layer_id = o.layer ? *o.layer : *cfg.layer_id;
    }
    const v41::tensor_set& tensors = ck ? ck->tensors() : case_tensors;
    const auto ids = read_ids(*file, "input_ids", 2);
    const auto& id_shape = file->at("input_ids").shape;
    const std::vector<std::int64_t> hidden_shape = {id_shape[0], id_shape[1], cfg.hc, cfg.hidden};
    const engram::tensor_view& h = file->at("hidden_states");
    if (h.type != engram::dtype::bf16 || h.shape != hidden_shape)
        throw engram::format_error(
            file->path().string() + ": tensor 'hidden_states' is " + std::string(engram::dtype_name(h.type)) + " " +
            engram::detail::shape_string(h.shape) + ", expected BF16 " + engram::detail::shape_string(hidden_shape));
    const auto mask = read_token_mask(*file, id_shape);
    const std::vector<float> hidden = h.to_vector<float>();
    std::vector<float> out(hidden.size());
    std::string source = "the " + std::string(ck ? "checkpoint" : "case") + "'s FP8 tensors in place";
    std::string note;
    bool root = true; // the rank that writes (every process but ranks 1.. of an MPI run)
    v41::dispatch(cfg, [&]<class L>(std::type_identity<L>) {
        auto layer =
            v41::load_layer<L>(cfg, layer_id, vocab, tensors, o.weights.value_or(engram::weight_format::bf16_dot));
        layer.set_threads(o.threads);
        const run_inputs<L> in{
            layer,    ids, hidden, out, static_cast<std::size_t>(id_shape[0]), static_cast<std::size_t>(id_shape[1]),
            o.stream, mask};
        const auto& table = layer.table();
        if (o.choice.kind == storage_choice::mpi) {
            const auto slice = [&](std::size_t first, std::size_t n) { return table.slice(first, n); };
            root = run_mpi(in, o.table_path, o.choice, slice, note);
            if (o.table_path) source = *o.table_path;
        } else if (o.table_path) {
            // The table file's rows as mapped (one instantiation per codec and order set, not
            // per storage tier too: this file's compile time is the CI's longest).
            if (o.choice.kind != storage_choice::mmap)
                throw engram::unsupported_error("--storage " + o.choice.text +
                                                " with --table: DeepSeek-V4.1 cases read table files mapped (mmap)");
            const auto tf = engram::table_file::open(*o.table_path);
            check_table_matches(tf, layer);
            tf.visit_rows([&](const auto& rows) { run_layer(in, rows); });
            source = *o.table_path + " (" + tf.codec() + ")";
        } else if (o.choice.kind == storage_choice::sharded) {
            const auto bounds = engram::shard_bounds_by_rows(table.rows(), std::min(o.choice.shards, table.rows()));
            run_layer(in, engram::make_sharded_table(
                              std::span<const std::size_t>(bounds),
                              [&](std::size_t first, std::size_t n) { return table.slice(first, n); }));
        } else if (o.choice.kind == storage_choice::cached) {
            run_tier(in, table, o.choice, true);
        } else {
            run_layer(in, table); // dense and mmap: the tensors in place
        }
    });
    if (!root) return;
    std::vector<std::uint16_t> bits(out.size());
    for (std::size_t i = 0; i < out.size(); ++i) bits[i] = engram::bfloat16::from_float(out[i]).bits;
    engram::safetensors_writer writer;
    writer.add_bf16("output", hidden_shape, bits);
    writer.set_metadata("format", "deepseek_v41_engram_output");
    writer.set_metadata("layer_id", std::to_string(layer_id));
    writer.write(output);
    std::cout << "ran DeepSeek-V4.1 Engram layer " << layer_id << " (orders 2.." << cfg.max_ngram << ") on "
              << id_shape[0] << " x " << id_shape[1] << " tokens" << (o.stream ? " (streamed)" : "")
              << (mask.empty() ? "" : ", token mask") << ", rows from " << source << " via " << o.choice.text << note
              << o.weights_note << "; wrote " << output << '\n';
}

engram::weight_format parse_weights(const std::string& text) {
    if (const auto f = engram::parse_weight_format(text)) return *f;
    throw usage_error("--weights '" + text + "': expected f32, bf16, bf16_dot or int8");
}

int cmd_forward(const std::vector<std::string>& argv) {
    // --table, --storage, --weights and --threads take values; the shared parser knows only
    // flags, so take them first.
    std::vector<std::string> rest;
    std::optional<std::string> table_path, storage_text, weights_text, threads_text, checkpoint, layer_text, token_map;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        auto value = [&](const std::string& name) {
            if (i + 1 >= argv.size()) throw usage_error(name + " needs a value");
            return argv[++i];
        };
        if (argv[i] == "--table")
            table_path = value("--table");
        else if (argv[i].rfind("--table=", 0) == 0)
            table_path = argv[i].substr(8);
        else if (argv[i] == "--storage")
            storage_text = value("--storage");
        else if (argv[i].rfind("--storage=", 0) == 0)
            storage_text = argv[i].substr(10);
        else if (argv[i] == "--weights")
            weights_text = value("--weights");
        else if (argv[i].rfind("--weights=", 0) == 0)
            weights_text = argv[i].substr(10);
        else if (argv[i] == "--checkpoint")
            checkpoint = value("--checkpoint");
        else if (argv[i] == "--layer")
            layer_text = value("--layer");
        else if (argv[i] == "--token-map")
            token_map = value("--token-map");
        else if (argv[i] == "--threads")
            threads_text = value("--threads");
        else if (argv[i].rfind("--threads=", 0) == 0)
            threads_text = argv[i].substr(10);
        else
            rest.push_back(argv[i]);
    }
    const auto a = args::parse(rest, {"--stream"});
    if (a.help) {
        std::cout << "usage: " << usage << "\n\n"
                  << "Loads the layer of a forward case (config metadata, 'lookup', the weights under the\n"
                  << "reference state-dict names), runs it on 'input_ids' (I64 [B, T]) and 'hidden_states'\n"
                  << "(F32 [B, T, M, H]) and writes 'output' (F32 [B, T, M, H]).\n"
                  << "  --stream      feed the tokens one at a time through the decode state (same output)\n"
                  << "  --table FILE  take the embedding rows from a table file (engram pack), any codec\n"
                  << "  --storage S   serve the rows from: dense (RAM), mmap (the file, zero-copy; default\n"
                  << "                with --table), sharded:N (N row ranges), cached:BYTES (a hot-row cache,\n"
                  << "                e.g. cached:16M, in front of the file or the case's rows), or mpi\n"
                  << "                (under mpirun/srun: the rows split over the ranks by row range, mpi:heads\n"
                  << "                by head; each rank holds its rows or maps its shards of --table, runs its\n"
                  << "                block of sequences; rank 0 writes OUT; needs an engram built with MPI)\n"
                  << "  --weights W   projection weights: f32 (default), bf16 (a bf16 copy, float products)\n"
                  << "                bf16_dot (bf16 weights and memory vectors, bf16 dot products) or int8\n"
                  << "                (int8 weights per output channel, int8 memory vectors per token)\n"
                  << "  --threads N   threads of the forward (default 1; same output for any N)\n"
                  << "DeepSeek-V4.1 case files (spec deepseek-v41.md section 6: FP8 tensors, BF16 hidden states\n"
                  << "[B, T, hc, dim], an optional token_mask) run the V4.1 layer and write BF16 'output'; rows\n"
                  << "are read in place (--storage mmap, sharded:N or cached:BYTES; --weights default bf16_dot).\n"
                  << "  --checkpoint DIR  run the case's inputs through Engram layer --layer L of a Hugging Face\n"
                  << "                checkpoint directory (config.json, index, shards, tokenizer.json)\n"
                  << "  --token-map FILE  a precomputed token map ('lookup') instead of tokenizer.json\n";
        return 0;
    }
    a.expect(1, true, usage);
    const storage_choice choice = parse_storage(storage_text.value_or(table_path ? "mmap" : "dense"));
    const engram::weight_format weights = parse_weights(weights_text.value_or("f32"));
    const std::size_t threads = threads_text ? parse_count("--threads", *threads_text, 1, 256) : 1;

    auto shared = std::make_shared<const engram::safetensors_file>(engram::safetensors_file::open(a.positional[0]));
    const auto& file = *shared;
    if (engram::deepseek_v41::is_case_file(file) || checkpoint ||
        (file.find_metadata("config") && engram::deepseek_v41::is_config(read_config(file)))) {
        forward_options o;
        o.table_path = table_path;
        o.choice = parse_storage(storage_text.value_or("mmap"));
        if (weights_text) o.weights = weights;
        o.weights_note = weights_text ? ", " + *weights_text + " weights" : std::string();
        o.threads = threads;
        o.stream = a.has("--stream");
        o.checkpoint = checkpoint;
        o.token_map = token_map;
        if (layer_text) o.layer = static_cast<std::int64_t>(parse_count("--layer", *layer_text, 0, 1u << 20));
        run_v41(shared, *a.output, o);
        return 0;
    }
    if (layer_text || token_map)
        throw usage_error("--layer and --token-map are for DeepSeek-V4.1 cases and checkpoints");
    // The layer type for the file's orders (2..N); everything below is compiled for each.
    engram::dispatch_layer(engram::load_layer_config(file).hash, [&]<class L>(std::type_identity<L>) {
        auto layer = engram::load_layer<typename L::policies_type>(file);
        layer.set_weight_format(weights);
        layer.set_threads(threads);
        run_case(layer, file, a.positional[0], *a.output, table_path, choice,
                 weights_text ? ", " + *weights_text + " weights" : std::string(), a.has("--stream"));
    });
    return 0;
}

const registration reg_forward{{"forward",
                                "forward CASE -o OUT [--stream] [--table T] [--storage S] [--weights W] [--threads N]  "
                                "run the Engram layer of a forward case",
                                &cmd_forward}};
} // namespace

} // namespace engram_cli
