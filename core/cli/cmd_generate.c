/* cmd_generate.c - `dexec generate` (prompt to PNG, flags as in
 * stable-diffusion.cpp's CLI) and `dexec health`. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dexec/rpc.h>

#include "cli.h"

static void generate_usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec generate -p PROMPT [OPTIONS]\n\n"
            "Generates images and writes them as PNG.\n\n"
            "  -p, --prompt TEXT          what to draw (empty: unconditional)\n"
            "  -n, --negative-prompt TEXT what to steer away from\n"
            "      --steps N              denoising steps (default: the model's)\n"
            "      --cfg-scale F          classifier-free guidance scale (default: the model's)\n"
            "  -s, --seed N               seed; negative picks one at random and prints it\n"
            "                             (default -1)\n"
            "  -W, --width N              width in pixels (default: the model's)\n"
            "  -H, --height N             height in pixels (default: the model's)\n"
            "  -b, --batch-count N        number of images, seeds SEED..SEED+N-1 (default 1)\n"
            "  -o, --output FILE          output PNG (default output.png); with several\n"
            "                             images: FILE-0.png, FILE-1.png, ... (FILE-i is the\n"
            "                             image of seed SEED+i); - writes the PNG to standard\n"
            "                             output (one image) and every status line to stderr\n"
            "      --scale N              enlarge each image N times, nearest neighbour, for\n"
            "                             viewing (default 1: the model's pixels)\n"
            "      --timeout S            deadline of each image once a rank took it\n"
            "                             (timeouts.generate, default 300)\n"
            "  -q, --quiet                no progress bar, no line per image (errors only)\n"
            "      --sampler NAME         the model's sampler by default; ddpm or ddim for a\n"
            "                             DiT (epsilon) model, euler or heun for a SiT (flow)\n"
            "                             model, euler for the bundled one\n"
            "      --noise FILE           the sampler's starting noise instead of the seed's:\n"
            "                             raw little-endian float32 [N, C, h, w], N = -b,\n"
            "                             image i taking the i-th (doc/model.md)\n"
            "      --step-noise FILE      ddpm only: the noise added after each step, float32\n"
            "                             [N, steps, C, h, w]\n"
            "%s",
            cli_engine_opts_help);
}

/* Progress bar state (stderr, only on a terminal). */
typedef struct bar {
    pthread_mutex_t lock;
    int enabled;
    int *steps_done; /* per request */
    int total_steps, nreq;
    double start;
} bar;

static void on_progress(void *user, size_t req, int image, int step, int total)
{
    bar *b = user;
    long done = 0, all;
    int width = 30, fill;

    (void)image;
    if (!b->enabled || req >= (size_t)b->nreq)
        return;
    pthread_mutex_lock(&b->lock);
    b->steps_done[req] = step;
    if (total > b->total_steps)
        b->total_steps = total;
    for (int i = 0; i < b->nreq; i++)
        done += b->steps_done[i];
    all = (long)b->total_steps * b->nreq;
    fill = all > 0 ? (int)(done * width / all) : 0;
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++)
        fputc(i < fill ? '=' : (i == fill ? '>' : ' '), stderr);
    fprintf(stderr, "] %ld/%ld steps %.1fs", done, all, dexec_now() - b->start);
    fflush(stderr);
    pthread_mutex_unlock(&b->lock);
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s || v < lo || v > hi) {
        fprintf(stderr, "dexec generate: %s expects an integer in %ld..%ld, got '%s'\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double *out)
{
    char *end;

    errno = 0;
    *out = strtod(s, &end);
    if (errno != 0 || *end != '\0' || end == s) {
        fprintf(stderr, "dexec generate: %s expects a number, got '%s'\n", opt, s);
        return -1;
    }
    return 0;
}

/* The file of image k of request i: FILE with one request of one image,
 * else FILE-i (and FILE-i-k when a request made several), so that a name
 * always says which seed it holds whatever else failed. */
static char *output_name(const char *out, long index, long count, size_t k, size_t nimages)
{
    const char *dot = strrchr(out, '.'), *slash = strrchr(out, '/');
    size_t stem = dot != NULL && (slash == NULL || dot > slash) ? (size_t)(dot - out)
                                                                 : strlen(out);
    char *name = malloc(strlen(out) + 48);

    if (name == NULL)
        return NULL;
    if (count <= 1 && nimages <= 1)
        strcpy(name, out);
    else if (nimages <= 1)
        sprintf(name, "%.*s-%ld%s", (int)stem, out, index, out + stem);
    else
        sprintf(name, "%.*s-%ld-%zu%s", (int)stem, out, index, k, out + stem);
    return name;
}

/* Refuses, before any work, an output the command could not write: a
 * format other than PNG, a directory that is missing or not writable, or
 * several images to standard output. 0 or -1 (message printed). */
static int check_output(const char *out, long batch)
{
    const char *slash = strrchr(out, '/'), *base = slash != NULL ? slash + 1 : out;
    const char *dot = strrchr(base, '.');

    if (strcmp(out, "-") == 0) {
        if (batch > 1) {
            fprintf(stderr,
                    "dexec generate: -o - writes one image to standard output, but -b asks "
                    "for %ld: use -b 1, or name a file\n",
                    batch);
            return -1;
        }
        return 0;
    }
    if (*base == '\0') {
        fprintf(stderr, "dexec generate: -o %s names a directory: add a file name, e.g. %sout.png\n",
                out, out);
        return -1;
    }
    if (dot != NULL && dot != base && strcasecmp(dot, ".png") != 0) {
        fprintf(stderr,
                "dexec generate: -o %s: dexec writes PNG only: name the file %.*s.png\n", out,
                (int)(dot - out), out);
        return -1;
    }
    return cli_check_out_dir("dexec generate: -o", out);
}

/* img enlarged factor times (nearest neighbour) into *out, whose pixels
 * the caller frees. -1 when memory is exhausted. */
static int scale_image(const dexec_image *img, int factor, dexec_image *out)
{
    size_t c = (size_t)img->channels, w = (size_t)img->width * (size_t)factor;

    *out = *img;
    out->width = img->width * factor;
    out->height = img->height * factor;
    out->pixels = malloc(w * (size_t)out->height * c);
    if (out->pixels == NULL)
        return -1;
    for (size_t y = 0; y < (size_t)out->height; y++) {
        const uint8_t *src = img->pixels + (y / (size_t)factor) * (size_t)img->width * c;
        uint8_t *dst = out->pixels + y * w * c;

        for (size_t x = 0; x < w; x++)
            memcpy(dst + x * c, src + (x / (size_t)factor) * c, c);
    }
    return 0;
}

/* The model file rank 0 serves (get_info's "path"), for the PNG's text;
 * NULL when it cannot be told. The caller frees it. */
static char *model_of(dexec_engine *e)
{
    dexec_value *replies = NULL;
    char *path = NULL;

    if (dexec_engine_collective_rpc(e, "get_info", 0, NULL, NULL, 0, &replies) == DEXEC_OK) {
        const char *p = dexec_value_as_str(dexec_value_map_get(replies, "path"), NULL);

        if (p != NULL)
            path = strdup(p);
    }
    dexec_value_free(replies);
    return path;
}

/* Value of a long option given as "--opt value" or "--opt=value". */
static const char *optval(int argc, char **argv, int *i, const char *s, const char *l, int *bad)
{
    const char *a = argv[*i];
    size_t n = strlen(l);

    if ((s != NULL && strcmp(a, s) == 0) || strcmp(a, l) == 0) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "dexec generate: option %s needs a value\n", a);
            *bad = 1;
            return NULL;
        }
        return argv[++*i];
    }
    if (strncmp(a, l, n) == 0 && a[n] == '=')
        return a + n + 1;
    return NULL;
}

/* Writes the images of request i; returns how many could not be written. */
static int write_outputs(const dexec_output *o, long i, long batch, const char *output,
                         const dexec_request *base, const char *model, int scale, int quiet,
                         FILE *info)
{
    char seed_s[32], steps_s[16], cfg_s[32];
    /* the class names the prompts resolved to (an older worker sends none) */
    const char *cls = DEXEC_HAS_FIELD(o, dexec_output, class_name) ? o->class_name : NULL;
    const char *neg =
        DEXEC_HAS_FIELD(o, dexec_output, negative_class_name) ? o->negative_class_name : NULL;
    int failed = 0;

    snprintf(seed_s, sizeof(seed_s), "%" PRId64, o->seed);
    snprintf(steps_s, sizeof(steps_s), "%d", o->steps);
    snprintf(cfg_s, sizeof(cfg_s), "%g", o->guidance_scale);
    for (size_t k = 0; k < o->num_images; k++) {
        const char *text[] = {"prompt", base->prompt != NULL ? base->prompt : "",
                              "negative_prompt",
                              base->negative_prompt != NULL ? base->negative_prompt : "",
                              "seed", seed_s, "steps", steps_s, "guidance_scale", cfg_s,
                              "model", model != NULL ? model : "",
                              "class", cls != NULL ? cls : "",
                              "negative_class", neg != NULL ? neg : "",
                              "Software", "dexec " PACKAGE_VERSION, NULL};
        const char *dest = strcmp(output, "-") == 0 ? NULL : output;
        char err[512], *name = dest != NULL ? output_name(output, i, batch, k, o->num_images)
                                            : strdup("-");
        dexec_image big, *img = (dexec_image *)&o->images[k];
        int rc;

        if (name == NULL || (scale > 1 && scale_image(img, scale, &big) != 0)) {
            fprintf(stderr, "dexec generate: image %ld (seed %" PRId64 "): out of memory\n", i,
                    o->seed);
            free(name);
            failed++;
            continue;
        }
        rc = cli_write_png(dest != NULL ? name : NULL, scale > 1 ? &big : img, text, err,
                           sizeof(err));
        if (scale > 1)
            free(big.pixels);
        if (rc != 0) {
            fprintf(stderr, "dexec generate: image %ld (seed %" PRId64 "): %s\n", i, o->seed, err);
            failed++;
        } else if (!quiet) {
            fprintf(info, "%s: %dx%d, seed %" PRId64 ", %d steps, cfg %g, rank %d, %.2f s\n",
                    name, img->width * scale, img->height * scale, o->seed, o->steps,
                    o->guidance_scale, o->rank,
                    o->timings.encode_s + o->timings.denoise_s + o->timings.decode_s);
        }
        free(name);
    }
    return failed;
}

/* The largest --noise / --step-noise file: far above a 512-px batch's
 * latents, below the protocol's frame limit. */
#define NOISE_MAX_FILE ((size_t)128 << 20)

/* Reads a noise file whole; nonzero (message printed) on failure. */
static int read_noise(const char *opt, const char *path, long batch, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rbe");
    long n;

    *buf = NULL;
    if (f == NULL) {
        fprintf(stderr, "dexec generate: %s %s: %s\n", opt, path, strerror(errno));
        return -1;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "dexec generate: %s %s: not a regular file (cannot find its size)\n",
                opt, path);
    } else if (n == 0 || (size_t)n > NOISE_MAX_FILE || n % (4 * batch) != 0) {
        fprintf(stderr,
                "dexec generate: %s %s: %ld bytes; expected raw little-endian float32, the "
                "same number for each of the %ld image(s) (a multiple of %ld bytes, at most "
                "%zu)\n",
                opt, path, n, batch, 4 * batch, NOISE_MAX_FILE);
    } else if ((*buf = malloc((size_t)n)) == NULL) {
        fprintf(stderr, "dexec generate: %s %s: out of memory\n", opt, path);
    } else if (fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "dexec generate: %s %s: read error\n", opt, path);
        free(*buf);
        *buf = NULL;
    } else {
        *len = (size_t)n;
    }
    fclose(f);
    return *buf != NULL ? 0 : -1;
}

/* A worker's refusal of the noise of a file: said once, naming the file
 * (what: "noise" or "step_noise", as the worker's message begins). */
static int noise_refused(const dexec_output *o, const char *what, const char *opt,
                         const char *path, size_t file_bytes, long batch)
{
    size_t l = strlen(what);

    if (path == NULL || o->status == DEXEC_OK || o->error == NULL ||
        strncmp(o->error, what, l) != 0 || strncmp(o->error + l, ": ", 2) != 0)
        return 0;
    if (batch == 1)
        fprintf(stderr, "dexec generate: %s %s: %s\n", opt, path, o->error + l + 2);
    else
        fprintf(stderr, "dexec generate: %s %s (%zu bytes, %zu per image for -b %ld): %s\n", opt,
                path, file_bytes, file_bytes / (size_t)batch, batch, o->error + l + 2);
    return 1;
}

int cmd_generate(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    dexec_request base;
    const char *output = "output.png", *v;
    long batch = 1, n, scale = 1;
    double timeout_s = 0;
    int quiet = 0, bad = 0, rc = 0, lost = 0, random_seed = 0;
    int64_t seed = -1;
    dexec_engine *e;
    dexec_request *reqs;
    dexec_output *outs = NULL;
    bar b = {.lock = PTHREAD_MUTEX_INITIALIZER};
    dexec_status st;
    char *model = NULL, lost_list[256] = "";
    FILE *info = stdout;
    const char *noise_path = NULL, *step_noise_path = NULL;
    char *noise = NULL, *step_noise = NULL;
    size_t noise_len = 0, step_noise_len = 0;

    dexec_request_init(&base);
    for (int i = 1; i < argc; i++) {
        int r = cli_engine_opt(&eo, argc, argv, &i);

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            generate_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0) {
            quiet = 1;
        } else if ((v = optval(argc, argv, &i, "-p", "--prompt", &bad)) != NULL) {
            base.prompt = v;
        } else if ((v = optval(argc, argv, &i, "-n", "--negative-prompt", &bad)) != NULL) {
            base.negative_prompt = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--steps", &bad)) != NULL) {
            if (parse_int("--steps", v, 1, DEXEC_MAX_STEPS, &n) != 0)
                return 2;
            base.num_inference_steps = (int)n;
        } else if ((v = optval(argc, argv, &i, NULL, "--cfg-scale", &bad)) != NULL) {
            if (parse_double("--cfg-scale", v, &base.guidance_scale) != 0)
                return 2;
            /* !(x <= max): NaN too */
            if (base.guidance_scale < 0 || !(base.guidance_scale <= DEXEC_MAX_GUIDANCE)) {
                fprintf(stderr, "dexec generate: --cfg-scale expects a number in 0..%g, got '%s'\n",
                        DEXEC_MAX_GUIDANCE, v);
                return 2;
            }
            if (base.guidance_scale > DEXEC_GUIDANCE_WARN)
                fprintf(stderr,
                        "dexec generate: warning: --cfg-scale %s is far above the usual 1..%d: "
                        "expect noise rather than a picture\n",
                        v, DEXEC_GUIDANCE_WARN);
        } else if ((v = optval(argc, argv, &i, "-s", "--seed", &bad)) != NULL) {
            char *end;

            errno = 0;
            seed = strtoll(v, &end, 10);
            if (errno != 0 || *end != '\0' || end == v) {
                fprintf(stderr,
                        "dexec generate: --seed expects an integer in 0..%" PRId64
                        " (negative: random), got '%s'\n",
                        INT64_MAX, v);
                return 2;
            }
        } else if ((v = optval(argc, argv, &i, "-W", "--width", &bad)) != NULL) {
            if (parse_int("--width", v, 1, DEXEC_MAX_IMAGE_SIZE, &n) != 0)
                return 2;
            base.width = (int)n;
        } else if ((v = optval(argc, argv, &i, "-H", "--height", &bad)) != NULL) {
            if (parse_int("--height", v, 1, DEXEC_MAX_IMAGE_SIZE, &n) != 0)
                return 2;
            base.height = (int)n;
        } else if ((v = optval(argc, argv, &i, "-b", "--batch-count", &bad)) != NULL) {
            if (parse_int("--batch-count", v, 1, DEXEC_MAX_BATCH, &batch) != 0)
                return 2;
        } else if ((v = optval(argc, argv, &i, "-o", "--output", &bad)) != NULL) {
            output = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--scale", &bad)) != NULL) {
            if (parse_int("--scale", v, 1, 64, &scale) != 0)
                return 2;
        } else if ((v = optval(argc, argv, &i, NULL, "--sampler", &bad)) != NULL) {
            base.sampler = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--noise", &bad)) != NULL) {
            noise_path = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--step-noise", &bad)) != NULL) {
            step_noise_path = v;
        } else if ((v = optval(argc, argv, &i, NULL, "--timeout", &bad)) != NULL) {
            if (parse_double("--timeout", v, &timeout_s) != 0)
                return 2;
            eo.set_key[eo.nset] = "timeouts.generate";
            eo.set_val[eo.nset++] = v;
        } else if (!bad && argv[i][0] != '-') {
            fprintf(stderr,
                    "dexec generate: unexpected argument '%s': a prompt needs -p, as in: dexec "
                    "generate -p \"%s\"\n",
                    argv[i], argv[i]);
            return 2;
        } else {
            if (!bad)
                fprintf(stderr, "dexec generate: unknown option '%s' (see --help)\n", argv[i]);
            return 2;
        }
        if (bad)
            return 2;
    }
    /* every image's seed, SEED+i, must be a seed too: refuse rather than
     * wrap into a negative number (which would mean "random") */
    if (seed > INT64_MAX - (batch - 1)) {
        fprintf(stderr,
                "dexec generate: --seed %" PRId64 " with -b %ld: image %ld would need seed %" PRId64
                "+%ld, above the largest seed %" PRId64 ": use a seed <= %" PRId64 "\n",
                seed, batch, batch - 1, seed, batch - 1, INT64_MAX, INT64_MAX - (batch - 1));
        return 2;
    }
    if (check_output(output, batch) != 0)
        return 2;
    if (base.sampler != NULL && base.sampler[0] == '\0') {
        fprintf(stderr, "dexec generate: --sampler needs a name: ddpm, ddim, euler or heun\n");
        return 2;
    }
    if ((noise_path != NULL && read_noise("--noise", noise_path, batch, &noise, &noise_len) != 0) ||
        (step_noise_path != NULL &&
         read_noise("--step-noise", step_noise_path, batch, &step_noise, &step_noise_len) != 0)) {
        free(noise);
        return 2;
    }
    if (strcmp(output, "-") == 0)
        info = stderr; /* standard output carries the PNG alone */
    if (seed < 0) {
        uint64_t r = 0;

        if (getrandom(&r, sizeof(r), 0) != (ssize_t)sizeof(r))
            r = (uint64_t)getpid() ^ (uint64_t)(dexec_now() * 1e6);
        seed = (int64_t)(r & 0xffffffffffffULL);
        random_seed = 1;
    }
    reqs = calloc((size_t)batch, sizeof(*reqs));
    b.steps_done = calloc((size_t)batch, sizeof(int));
    if (reqs == NULL || b.steps_done == NULL) {
        fprintf(stderr, "dexec generate: out of memory\n");
        free(reqs);
        free(b.steps_done);
        free(noise);
        free(step_noise);
        return 1;
    }
    for (long i = 0; i < batch; i++) {
        reqs[i] = base;
        reqs[i].seed = seed + i;
        /* image i takes the i-th of the file's equal parts */
        if (noise != NULL) {
            reqs[i].noise_bytes = noise_len / (size_t)batch;
            reqs[i].noise = noise + (size_t)i * reqs[i].noise_bytes;
        }
        if (step_noise != NULL) {
            reqs[i].step_noise_bytes = step_noise_len / (size_t)batch;
            reqs[i].step_noise = step_noise + (size_t)i * reqs[i].step_noise_bytes;
        }
    }
    e = cli_open_engine(&eo, &rc);
    if (e == NULL) {
        free(reqs);
        free(b.steps_done);
        free(noise);
        free(step_noise);
        return rc;
    }
    b.enabled = !quiet && isatty(STDERR_FILENO);
    b.nreq = (int)batch;
    /* asked before the step: a rank that dies in it (and is not restarted)
     * would fail the collective afterwards, leaving the PNGs' model empty */
    model = model_of(e);
    b.start = dexec_now();
    st = dexec_engine_step(e, reqs, (size_t)batch, &outs, on_progress, &b);
    if (b.enabled)
        fprintf(stderr, "\n");
    if (st != DEXEC_OK) {
        fprintf(stderr, "dexec generate: %s\n", dexec_engine_last_error(e));
        /* the seeds, which a random one would otherwise never say */
        if (batch == 1)
            fprintf(stderr, "dexec generate: no image written (seed %" PRId64 ")\n", seed);
        else
            fprintf(stderr,
                    "dexec generate: none of the %ld images written (seeds %" PRId64 "..%" PRId64
                    ")\n",
                    batch, seed, seed + batch - 1);
        rc = 1;
    }
    /* the random seed is said with the first image made: a run refused or
     * failed whole prints nothing on standard output (the lost images'
     * lines name their seeds) */
    for (long i = 0; random_seed && !quiet && st == DEXEC_OK && i < batch; i++)
        if (outs[i].status == DEXEC_OK) {
            fprintf(info, "seed: %" PRId64 "\n", seed);
            break;
        }
    for (long i = 0; st == DEXEC_OK && i < batch; i++) {
        const dexec_output *o = &outs[i];

        int failed;

        if (noise_refused(o, "noise", "--noise", noise_path, noise_len, batch) ||
            noise_refused(o, "step_noise", "--step-noise", step_noise_path, step_noise_len,
                          batch)) {
            /* the same refusal for every image: said once, and no
             * image is written */
            rc = 1;
            lost = 0;
            break;
        }
        if (o->status != DEXEC_OK) {
            fprintf(stderr, "dexec generate: image %ld (seed %" PRId64 ") lost: %s\n", i,
                    seed + i, o->error != NULL ? o->error : "failed");
            failed = 1;
        } else {
            failed = write_outputs(o, i, batch, output, &base, model, (int)scale, quiet, info);
        }
        if (failed > 0) {
            size_t used = strlen(lost_list);

            snprintf(lost_list + used, sizeof(lost_list) - used, "%s%ld", lost ? ", " : "", i);
            lost++;
        }
    }
    if (lost > 0) {
        fprintf(stderr, "dexec generate: %d of %ld image(s) not written (index %s)%s\n", lost,
                batch, lost_list, lost < batch ? "; the others were written" : "");
        rc = 1;
    }
    if (st == DEXEC_OK)
        dexec_outputs_free(outs, (size_t)batch);
    dexec_engine_free(e);
    free(model);
    free(reqs);
    free(b.steps_done);
    free(noise);
    free(step_noise);
    return rc;
}

int cmd_health(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    dexec_engine *e;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        int r = cli_engine_opt(&eo, argc, argv, &i);

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("Usage: dexec health [OPTIONS]\n\nStarts or connects the deployment's "
                   "workers and checks that every rank answers\nwithin timeouts.health. Exit "
                   "status 0 when healthy, 1 otherwise, 2 on a usage error.\n\n%s",
                   cli_engine_opts_help);
            return 0;
        }
        fprintf(stderr, "dexec health: unknown option '%s' (see --help)\n", argv[i]);
        return 2;
    }
    e = cli_open_engine(&eo, &rc);
    if (e == NULL)
        return rc;
    if (dexec_engine_check_health(e) == DEXEC_OK) {
        printf("healthy: %d rank(s) on %s\n", dexec_engine_num_ranks(e), dexec_engine_backend(e));
    } else {
        fprintf(stderr, "dexec health: %s\n", dexec_engine_last_error(e));
        rc = 1;
    }
    dexec_engine_free(e);
    return rc;
}
