/*
 * dexec_model.c - dexec-model: creates seeded random DiT model files (for
 * tests, benchmarks and trying a deployment before a model is trained) and
 * describes model files.
 *
 *   dexec-model init OUT.safetensors [options]
 *   dexec-model info FILE
 */
#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dexec/dexec.h>
#include <dexec/value.h>

#include "dit.h"
#include "safetensors.h"
#include "sampler.h"

static void usage(FILE *f)
{
    fputs("Usage: dexec-model init OUT.safetensors [OPTIONS]\n"
          "       dexec-model info FILE.safetensors\n"
          "\n"
          "init writes a DiT with seeded random weights (same options, same bytes).\n"
          "  --image-size N   native image size in pixels (28)\n"
          "  --channels C     1 grey or 3 RGB (1)\n"
          "  --patch P        patch size; divides the image size (4)\n"
          "  --hidden D       hidden size; a multiple of 4 and of the heads (128)\n"
          "  --depth L        transformer blocks (4)\n"
          "  --heads H        attention heads (4)\n"
          "  --mlp-ratio R    MLP hidden = D x R (4)\n"
          "  --classes K      condition classes (10)\n"
          "  --vocab LIST     prompt words, word=index,... (default: class0..classK-1)\n"
          "  --seed S         weight seed (0)\n"
          "  --shift F        sampler sigma shift (1.0)\n"
          "  --steps N        default inference steps (20)\n"
          "  --guidance G     default guidance scale (4.0)\n"
          "info prints the metadata, every tensor (name, dtype, shape) and the\n"
          "parameter count, and checks the file as dexec-worker would.\n"
          "  -h, --help       this text\n"
          "  -V, --version    the dexec version\n",
          f);
}

typedef struct init_opts {
    int image_size, channels, patch, hidden, depth, heads, mlp_ratio, classes, steps;
    long long seed;
    double shift, guidance;
    const char *vocab;
} init_opts;

static int parse_int(const char *opt, const char *s, int lo, int hi, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "dexec-model: %s '%s': expected an integer in %d..%d\n", opt, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "dexec-model: %s '%s': expected a number in %g..%g\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/* One tensor to write: its name, shape and how its random values scale. */
typedef struct spec {
    char name[64];
    int ndim;
    int64_t shape[4];
    double std;
} spec;

static size_t spec_numel(const spec *s)
{
    size_t n = 1;
    int i;

    for (i = 0; i < s->ndim; i++)
        n *= (size_t)s->shape[i];
    return n;
}

static int add_spec(spec **v, size_t *n, const char *name, int ndim, int64_t a, int64_t b,
                    int64_t c, int64_t d, double std)
{
    spec *g = realloc(*v, (*n + 1) * sizeof *g), *s;

    if (g == NULL)
        return -1;
    *v = g;
    s = &g[(*n)++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = a;
    s->shape[1] = b;
    s->shape[2] = c;
    s->shape[3] = d;
    s->std = std;
    return 0;
}

/* Weight of a linear layer ~ N(0, 1/fan_in), bias ~ N(0, 0.1^2): every
 * layer, the adaLN and final ones included, is non-zero (DiT's adaLN-Zero
 * init would make a fresh model output a constant). */
static int add_linear(spec **v, size_t *n, const char *prefix, int64_t out, int64_t in)
{
    char name[64];

    snprintf(name, sizeof name, "%s.weight", prefix);
    if (add_spec(v, n, name, 2, out, in, 0, 0, 1.0 / sqrt((double)in)))
        return -1;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return add_spec(v, n, name, 1, out, 0, 0, 0, 0.1);
}

static spec *dit_specs(const init_opts *o, size_t *count)
{
    int64_t D = o->hidden, C = o->channels, p = o->patch, M = D * o->mlp_ratio;
    spec *v = NULL;
    size_t n = 0;
    char prefix[64];
    int i, bad = 0;

    bad |= add_spec(&v, &n, "x_embedder.proj.weight", 4, D, C, p, p,
                    1.0 / sqrt((double)(C * p * p)));
    bad |= add_spec(&v, &n, "x_embedder.proj.bias", 1, D, 0, 0, 0, 0.1);
    bad |= add_linear(&v, &n, "t_embedder.mlp.0", D, DXK_TFREQ_DIM);
    bad |= add_linear(&v, &n, "t_embedder.mlp.2", D, D);
    bad |= add_spec(&v, &n, "y_embedder.embedding_table.weight", 2, o->classes + 1, D, 0, 0, 1.0);
    for (i = 0; i < o->depth && !bad; i++) {
        snprintf(prefix, sizeof prefix, "blocks.%d.adaLN_modulation.1", i);
        bad |= add_linear(&v, &n, prefix, 6 * D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.qkv", i);
        bad |= add_linear(&v, &n, prefix, 3 * D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.attn.proj", i);
        bad |= add_linear(&v, &n, prefix, D, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc1", i);
        bad |= add_linear(&v, &n, prefix, M, D);
        snprintf(prefix, sizeof prefix, "blocks.%d.mlp.fc2", i);
        bad |= add_linear(&v, &n, prefix, D, M);
    }
    bad |= add_linear(&v, &n, "final_layer.adaLN_modulation.1", 2 * D, D);
    bad |= add_linear(&v, &n, "final_layer.linear", p * p * C, D);
    if (bad) {
        free(v);
        return NULL;
    }
    *count = n;
    return v;
}

/* dexec.vocab and dexec.class_names from --vocab (or class0..). */
static int make_vocab(const init_opts *o, char **vocab_json, char **names_json)
{
    dexec_value *vocab = dexec_value_map(), *names = dexec_value_array();
    char **first = calloc((size_t)o->classes, sizeof *first);
    int i, rc = -1;

    if (vocab == NULL || names == NULL || first == NULL)
        goto out;
    if (o->vocab != NULL) {
        char *copy = strdup(o->vocab), *save = NULL, *item;

        if (copy == NULL)
            goto out;
        for (item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
            char *eq = strrchr(item, '=');
            int idx;

            if (eq == NULL || eq == item) {
                fprintf(stderr, "dexec-model: --vocab '%s': expected word=index\n", item);
                free(copy);
                goto out;
            }
            *eq = '\0';
            if (parse_int("--vocab", eq + 1, 0, o->classes - 1, &idx) != 0 ||
                dexec_value_map_set(vocab, item, dexec_value_int(idx)) != 0) {
                free(copy);
                goto out;
            }
            if (first[idx] == NULL && (first[idx] = strdup(item)) == NULL) {
                free(copy);
                goto out;
            }
        }
        free(copy);
    }
    for (i = 0; i < o->classes; i++) {
        char buf[32];

        snprintf(buf, sizeof buf, "class%d", i);
        if (o->vocab == NULL && dexec_value_map_set(vocab, buf, dexec_value_int(i)) != 0)
            goto out;
        if (dexec_value_array_push(names, dexec_value_str(first[i] ? first[i] : buf)) != 0)
            goto out;
    }
    *vocab_json = dexec_value_to_json(vocab, 0);
    *names_json = dexec_value_to_json(names, 0);
    rc = *vocab_json && *names_json ? 0 : -1;
out:
    if (first != NULL)
        for (i = 0; i < o->classes; i++)
            free(first[i]);
    free(first);
    dexec_value_free(vocab);
    dexec_value_free(names);
    return rc;
}

static int set_str(dexec_value *map, const char *key, const char *val)
{
    return dexec_value_map_set(map, key, dexec_value_str(val));
}

static int set_fmt(dexec_value *map, const char *key, const char *fmt, double v)
{
    char buf[64];

    snprintf(buf, sizeof buf, fmt, v);
    return set_str(map, key, buf);
}

static char *make_header(const init_opts *o, const spec *specs, size_t n)
{
    dexec_value *root = dexec_value_map(), *md = dexec_value_map();
    char *vocab = NULL, *names = NULL, *json = NULL, seed[32];
    size_t i, off = 0;
    int bad = root == NULL || md == NULL;

    if (!bad)
        bad = make_vocab(o, &vocab, &names);
    if (!bad) {
        snprintf(seed, sizeof seed, "%lld", o->seed);
        bad |= set_str(md, "dexec.format", "dit");
        bad |= set_fmt(md, "dexec.image_size", "%.0f", o->image_size);
        bad |= set_fmt(md, "dexec.in_channels", "%.0f", o->channels);
        bad |= set_fmt(md, "dexec.patch_size", "%.0f", o->patch);
        bad |= set_fmt(md, "dexec.hidden_size", "%.0f", o->hidden);
        bad |= set_fmt(md, "dexec.depth", "%.0f", o->depth);
        bad |= set_fmt(md, "dexec.num_heads", "%.0f", o->heads);
        bad |= set_fmt(md, "dexec.mlp_ratio", "%.0f", o->mlp_ratio);
        bad |= set_fmt(md, "dexec.num_classes", "%.0f", o->classes);
        bad |= set_fmt(md, "dexec.sigma_shift", "%.17g", o->shift);
        bad |= set_fmt(md, "dexec.default_steps", "%.0f", o->steps);
        bad |= set_fmt(md, "dexec.default_guidance", "%.17g", o->guidance);
        bad |= set_str(md, "dexec.class_names", names);
        bad |= set_str(md, "dexec.vocab", vocab);
        bad |= set_str(md, "dexec_model.seed", seed);
        bad |= set_str(md, "dexec_model.note", "random weights from dexec-model init, not trained");
        bad |= dexec_value_map_set(root, "__metadata__", md);
        md = NULL;
    }
    for (i = 0; i < n && !bad; i++) {
        dexec_value *t = dexec_value_map(), *shape = dexec_value_array(),
                    *offs = dexec_value_array();
        size_t bytes = spec_numel(&specs[i]) * sizeof(float);
        int d;

        bad |= t == NULL || shape == NULL || offs == NULL;
        for (d = 0; d < specs[i].ndim && !bad; d++)
            bad |= dexec_value_array_push(shape, dexec_value_int(specs[i].shape[d]));
        if (!bad) {
            bad |= dexec_value_array_push(offs, dexec_value_int((int64_t)off));
            bad |= dexec_value_array_push(offs, dexec_value_int((int64_t)(off + bytes)));
            bad |= set_str(t, "dtype", "F32");
            bad |= dexec_value_map_set(t, "shape", shape);
            bad |= dexec_value_map_set(t, "data_offsets", offs);
            bad |= dexec_value_map_set(root, specs[i].name, t);
        } else {
            dexec_value_free(t);
            dexec_value_free(shape);
            dexec_value_free(offs);
        }
        off += bytes;
    }
    if (!bad)
        json = dexec_value_to_json(root, 0);
    dexec_value_free(root);
    dexec_value_free(md);
    free(vocab);
    free(names);
    return json;
}

static int write_all(FILE *f, const void *p, size_t n)
{
    return fwrite(p, 1, n, f) == n ? 0 : -1;
}

static int cmd_init(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"image-size", required_argument, NULL, 'i'}, {"channels", required_argument, NULL, 'c'},
        {"patch", required_argument, NULL, 'p'},      {"hidden", required_argument, NULL, 'd'},
        {"depth", required_argument, NULL, 'l'},      {"heads", required_argument, NULL, 'H'},
        {"mlp-ratio", required_argument, NULL, 'r'},  {"classes", required_argument, NULL, 'k'},
        {"vocab", required_argument, NULL, 'v'},      {"seed", required_argument, NULL, 's'},
        {"shift", required_argument, NULL, 'f'},      {"steps", required_argument, NULL, 'n'},
        {"guidance", required_argument, NULL, 'g'},   {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    init_opts o = {28, 1, 4, 128, 4, 4, 4, 10, 20, 0, 1.0, 4.0, NULL};
    const char *out;
    char tmp[4096], *header = NULL, err[1024];
    spec *specs = NULL;
    size_t n = 0, i, hlen, pad;
    unsigned char len8[8];
    float *buf = NULL;
    FILE *f = NULL;
    int opt, rc = 1, b;
    dxk_safetensors *st = NULL;
    dxk_dit_config cfg;

    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int bad = 0;
        double seed;

        switch (opt) {
        case 'i': bad = parse_int("--image-size", optarg, 1, 4096, &o.image_size); break;
        case 'c': bad = parse_int("--channels", optarg, 1, 4, &o.channels); break;
        case 'p': bad = parse_int("--patch", optarg, 1, 64, &o.patch); break;
        case 'd': bad = parse_int("--hidden", optarg, 4, 16384, &o.hidden); break;
        case 'l': bad = parse_int("--depth", optarg, 1, 256, &o.depth); break;
        case 'H': bad = parse_int("--heads", optarg, 1, 256, &o.heads); break;
        case 'r': bad = parse_int("--mlp-ratio", optarg, 1, 16, &o.mlp_ratio); break;
        case 'k': bad = parse_int("--classes", optarg, 1, 1000000, &o.classes); break;
        case 'n': bad = parse_int("--steps", optarg, 1, 1000, &o.steps); break;
        case 'v': o.vocab = optarg; break;
        case 's':
            bad = parse_double("--seed", optarg, 0, 9007199254740992.0, &seed);
            if (!bad && seed != floor(seed)) {
                fprintf(stderr, "dexec-model: --seed '%s': expected an integer\n", optarg);
                bad = 1;
            }
            o.seed = (long long)seed;
            break;
        case 'f': bad = parse_double("--shift", optarg, 1e-3, 1e3, &o.shift); break;
        case 'g': bad = parse_double("--guidance", optarg, 0, 100, &o.guidance); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad)
            return 2;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "dexec-model init: expected one output file\n");
        usage(stderr);
        return 2;
    }
    out = argv[optind];
    if (o.image_size % o.patch != 0) {
        fprintf(stderr, "dexec-model: --image-size %d is not a multiple of --patch %d\n",
                o.image_size, o.patch);
        return 2;
    }
    if (o.hidden % 4 != 0 || o.hidden % o.heads != 0) {
        fprintf(stderr, "dexec-model: --hidden %d must be a multiple of 4 and of --heads %d\n",
                o.hidden, o.heads);
        return 2;
    }
    specs = dit_specs(&o, &n);
    header = specs ? make_header(&o, specs, n) : NULL;
    if (header == NULL) {
        fprintf(stderr, "dexec-model: out of memory (or a bad --vocab)\n");
        goto done;
    }
    /* pad with spaces so that 8 + N is a multiple of 8: F32 data stays aligned */
    hlen = strlen(header);
    pad = (8 - (8 + hlen) % 8) % 8;
    for (b = 0; b < 8; b++)
        len8[b] = (unsigned char)((uint64_t)(hlen + pad) >> (8 * b));
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    f = fopen(tmp, "wbe");
    if (f == NULL) {
        fprintf(stderr, "dexec-model: cannot create %s: %s\n", tmp, strerror(errno));
        goto done;
    }
    if (write_all(f, len8, 8) || write_all(f, header, hlen) || write_all(f, "        ", pad))
        goto write_error;
    for (i = 0; i < n; i++) {
        size_t k, numel = spec_numel(&specs[i]);
        float *nb = realloc(buf, numel * sizeof *nb);

        if (nb == NULL) {
            fprintf(stderr, "dexec-model: out of memory\n");
            goto done;
        }
        buf = nb;
        /* the sampler's counter-based normals, keyed by (seed, tensor index):
         * the file depends on the options only */
        dxk_noise((uint64_t)o.seed, i, buf, numel);
        for (k = 0; k < numel; k++)
            buf[k] = (float)(buf[k] * specs[i].std);
        if (write_all(f, buf, numel * sizeof *buf))
            goto write_error;
    }
    if (fclose(f) != 0) {
        f = NULL;
        goto write_error;
    }
    f = NULL;
    /* check the result as dexec-worker will, before it takes the name */
    if (dxk_st_open(tmp, &st, err, sizeof err) != DEXEC_OK ||
        dxk_dit_config_read(st, &cfg, err, sizeof err) != DEXEC_OK) {
        fprintf(stderr, "dexec-model: the file written does not check: %s\n", err);
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, out) != 0) {
        fprintf(stderr, "dexec-model: cannot rename %s to %s: %s\n", tmp, out, strerror(errno));
        unlink(tmp);
        goto done;
    }
    printf("%s: DiT %dx%d C=%d p=%d D=%d depth=%d heads=%d, %zu tensors, seed %lld\n", out,
           o.image_size, o.image_size, o.channels, o.patch, o.hidden, o.depth, o.heads, n, o.seed);
    rc = 0;
    goto done;
write_error:
    fprintf(stderr, "dexec-model: writing %s: %s\n", tmp, strerror(errno));
    if (f != NULL)
        fclose(f);
    f = NULL;
    unlink(tmp);
done:
    if (f != NULL) {
        fclose(f);
        unlink(tmp);
    }
    dxk_st_close(st);
    free(buf);
    free(header);
    free(specs);
    return rc;
}

static int cmd_info(int argc, char **argv)
{
    dxk_safetensors *st = NULL;
    dxk_dit_config cfg;
    dxk_backend *be = NULL;
    dxk_dit *dit = NULL;
    char err[1024];
    size_t i, params = 0;
    int d, rc = 0;

    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 2) {
        fprintf(stderr, "dexec-model info: expected one model file\n");
        usage(stderr);
        return 2;
    }
    if (dxk_st_open(argv[1], &st, err, sizeof err) != DEXEC_OK) {
        fprintf(stderr, "dexec-model: %s\n", err);
        return 1;
    }
    printf("file: %s\n", st->path);
    printf("metadata:\n");
    for (i = 0; i < st->metadata->u.map.len; i++)
        printf("  %s = %s\n", st->metadata->u.map.items[i].key,
               st->metadata->u.map.items[i].val->u.str.ptr);
    printf("tensors: %zu\n", st->ntensors);
    for (i = 0; i < st->ntensors; i++) {
        const dxk_tensor *t = &st->tensors[i];

        printf("  %-40s %-4s [", t->name, dxk_dtype_name(t->dtype));
        for (d = 0; d < t->ndim; d++)
            printf("%s%lld", d ? ", " : "", (long long)t->shape[d]);
        printf("]\n");
        params += t->numel;
    }
    printf("parameters: %zu (%.2f MiB as F32)\n", params, params * 4.0 / (1024.0 * 1024.0));
    if (dxk_dit_config_read(st, &cfg, err, sizeof err) != DEXEC_OK ||
        dxk_backend_cpu(&be, err, sizeof err) != DEXEC_OK ||
        dxk_dit_load(st, &cfg, be, &dit, err, sizeof err) != DEXEC_OK) {
        printf("check: FAILED: %s\n", err);
        rc = 1;
    } else {
        printf("check: ok (DiT %dx%d, %d channel(s), patch %d, hidden %d, depth %d, %d heads, "
               "%d classes; %.2f GFLOP per forward pass)\n",
               cfg.image_size, cfg.image_size, cfg.in_channels, cfg.patch_size, cfg.hidden_size,
               cfg.depth, cfg.num_heads, cfg.num_classes,
               dxk_dit_flops(&cfg, 1, cfg.image_size, cfg.image_size) / 1e9);
    }
    dxk_dit_free(dit);
    dxk_backend_free(be);
    dxk_st_close(st);
    return rc;
}

int main(int argc, char **argv)
{
    dexec_log_set_program("dexec-model");
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("dexec-model %s\n", dexec_version());
        return 0;
    }
    dexec_log_set_level(DEXEC_LOG_WARN);
    if (strcmp(argv[1], "init") == 0)
        return cmd_init(argc - 1, argv + 1);
    if (strcmp(argv[1], "info") == 0)
        return cmd_info(argc - 1, argv + 1);
    fprintf(stderr, "dexec-model: unknown command '%s' (init, info)\n", argv[1]);
    usage(stderr);
    return 2;
}
