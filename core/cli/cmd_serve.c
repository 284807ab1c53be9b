/* cmd_serve.c - `dexec serve`: one engine behind an HTTP/1.1 server
 * (libmicrohttpd, a thread per connection) speaking the OpenAI Images API,
 * with /health, /ready, Prometheus /metrics and a page at /.
 *
 * The images of a request are one submission (dexec_engine_submit); the
 * engine gives each image to the next free rank as soon as one is free, so
 * the images of one request spread over the ranks and a short request
 * waits only for images queued before it to start; the engine's bounded queue
 * (engine.max_queued) answers 429 when full. The
 * connection's thread waits for its images with the request's deadline,
 * watching the socket: a client that hangs up has its images cancelled.
 *
 * Engine callbacks (progress, done) run on dispatcher threads and may come
 * late for a cancelled request; they reach a request through the job
 * table by id under the server lock, so a finished request is simply not
 * found. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <dexec/limits.h>
#include <dexec/server.h>

#include "cli.h"

#define COMP "serve"

/* ---- metrics --------------------------------------------------------------- */

static const double buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                 5,    10,    30,   60,  120,  300, 600};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

typedef struct histo {
    uint64_t le[NBUCKETS]; /* cumulative counts are computed when written */
    uint64_t count;
    double sum;
} histo;

enum { STAGE_QUEUE, STAGE_ENCODE, STAGE_DENOISE, STAGE_DECODE, NSTAGES };
static const char *const stage_names[NSTAGES] = {"queue", "encode", "denoise", "decode"};

/* The paths counted by name; anything else is "other". */
static const char *const known_paths[] = {"/",        "/v1/images/generations", "/v1/models",
                                          "/health",  "/ready",                 "/metrics",
                                          "other"};
#define NPATHS (sizeof(known_paths) / sizeof(known_paths[0]))
#define MAX_CODES 24

/* ---- requests in progress ---------------------------------------------------- */

typedef struct job {
    uint64_t id;
    struct job *next;
    int n;
    dexec_handle **h;
    int *step, *total, *done; /* per image, written by the engine callbacks */
    /* per image: times its computation started over (a step number not
     * above the last one: the executor dealt it again after its worker
     * died), and the step it had reached */
    int *restarts, *lost_step;
    int ndone;
    int efd;    /* eventfd: an image completed (or, when streaming, progressed) */
    int stream; /* server-sent events: progress wakes the connection's thread */
    /* what the PNG text chunks say */
    char *prompt, *negative;
    /* streaming (server-sent events) state, used by the connection's thread */
    int sock;
    double deadline, last_write;
    int *sent_step, *sent_restarts, *emitted, nemitted, nok, finished;
    char *pend;
    size_t plen, poff;
    char rid[64];
} job;

typedef struct server {
    dexec_engine *e;
    struct MHD_Daemon *d;
    char model_id[256];
    const char *model_key; /* the configuration's model value */
    char *token;           /* NULL: none required */
    double request_timeout, drain_grace;
    long max_body, max_prompt, max_images;
    long max_queued; /* engine.max_queued: a request's images must fit at once */
    int par_cfg; /* parallel.cfg: 2 needs guidance */
    int nranks;
    time_t started;
    double start;

    pthread_mutex_t lock; /* everything below */
    int draining, stopping;
    int in_flight;
    int ready;
    char ready_msg[1024];
    job *jobs;
    uint64_t next_job, next_rid;
    struct {
        int code;
        uint64_t n;
    } counts[NPATHS][MAX_CODES];
    histo e2e, stage[NSTAGES];
    uint64_t images_total, health_failures;
    uint64_t ring_n[60];
    long ring_sec[60];
    double *rank_busy;
    uint64_t *rank_errors; /* nranks + 1: the last one for an unknown rank */
} server;

static server S = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void histo_add(histo *h, double v)
{
    for (size_t i = 0; i < NBUCKETS; i++)
        if (v <= buckets[i]) {
            h->le[i]++;
            break;
        }
    h->count++;
    h->sum += v;
}

static size_t path_index(const char *url)
{
    for (size_t i = 0; i + 1 < NPATHS; i++)
        if (strcmp(url, known_paths[i]) == 0)
            return i;
    return NPATHS - 1;
}

/* S.lock held. */
static void count_status(size_t path, int code)
{
    for (int i = 0; i < MAX_CODES; i++) {
        if (S.counts[path][i].code == code || S.counts[path][i].code == 0) {
            S.counts[path][i].code = code;
            S.counts[path][i].n++;
            return;
        }
    }
}

/* Accounts one finished engine output (any thread). */
static void record_output(const dexec_output *o)
{
    long sec = (long)dexec_now();
    int r = o->rank >= 0 && o->rank < S.nranks ? o->rank : S.nranks;

    pthread_mutex_lock(&S.lock);
    if (o->status == DEXEC_OK) {
        const dexec_timings *t = &o->timings;

        S.images_total += o->num_images;
        if (S.ring_sec[sec % 60] != sec) {
            S.ring_sec[sec % 60] = sec;
            S.ring_n[sec % 60] = 0;
        }
        S.ring_n[sec % 60] += o->num_images;
        histo_add(&S.stage[STAGE_QUEUE], t->queue_s);
        histo_add(&S.stage[STAGE_ENCODE], t->encode_s);
        histo_add(&S.stage[STAGE_DENOISE], t->denoise_s);
        histo_add(&S.stage[STAGE_DECODE], t->decode_s);
        if (r < S.nranks)
            S.rank_busy[r] += t->encode_s + t->denoise_s + t->decode_s;
    } else if (o->status == DEXEC_EWORKER) {
        S.rank_errors[r]++;
    }
    pthread_mutex_unlock(&S.lock);
}

static void write_histo(FILE *f, const char *name, const char *label, const histo *h)
{
    uint64_t cum = 0;

    for (size_t i = 0; i < NBUCKETS; i++) {
        cum += h->le[i];
        fprintf(f, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, label, *label ? "," : "",
                buckets[i], cum);
    }
    fprintf(f, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, label, *label ? "," : "",
            h->count);
    fprintf(f, "%s_sum%s%s%s %.6f\n", name, *label ? "{" : "", label, *label ? "}" : "", h->sum);
    fprintf(f, "%s_count%s%s%s %" PRIu64 "\n", name, *label ? "{" : "", label, *label ? "}" : "",
            h->count);
}

/* The Prometheus text format (version 0.0.4). Caller frees. */
static char *metrics_text(void)
{
    char *buf = NULL, label[64];
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    long now = (long)dexec_now();
    double window = dexec_now() - S.start;
    uint64_t recent = 0;
    int waiting = 0, nstats = 0;
    dexec_rank_stats *rs;

    if (f == NULL)
        return NULL;
    /* the engine's recovery counts, asked before the server lock (the
     * engine takes its own); none when the executor keeps none */
    rs = calloc((size_t)S.nranks + 1, sizeof(*rs));
    for (int r = 0; rs != NULL && r < S.nranks; r++) {
        dexec_rank_stats_init(&rs[r]);
        if (dexec_engine_rank_stats(S.e, r, &rs[r]) != DEXEC_OK) {
            nstats = 0;
            break;
        }
        nstats = r + 1;
    }
    pthread_mutex_lock(&S.lock);
    fprintf(f, "# HELP dexec_serve_requests_total HTTP requests answered, by path and status "
               "(499: the client hung up first).\n# TYPE dexec_serve_requests_total counter\n");
    for (size_t p = 0; p < NPATHS; p++)
        for (int i = 0; i < MAX_CODES && S.counts[p][i].code != 0; i++)
            fprintf(f, "dexec_serve_requests_total{path=\"%s\",code=\"%d\"} %" PRIu64 "\n",
                    known_paths[p], S.counts[p][i].code, S.counts[p][i].n);
    for (job *j = S.jobs; j != NULL; j = j->next)
        for (int i = 0; i < j->n; i++)
            waiting += !j->done[i] && j->step[i] == 0;
    fprintf(f, "# HELP dexec_serve_queue_depth Images submitted whose first denoising step has "
               "not completed (waiting for a rank or encoding).\n"
               "# TYPE dexec_serve_queue_depth gauge\ndexec_serve_queue_depth %d\n",
            waiting);
    fprintf(f, "# HELP dexec_serve_in_flight_requests Generation requests being served.\n"
               "# TYPE dexec_serve_in_flight_requests gauge\n"
               "dexec_serve_in_flight_requests %d\n",
            S.in_flight);
    fprintf(f, "# HELP dexec_serve_request_duration_seconds End-to-end time of successful "
               "generation requests (arrival to last byte).\n"
               "# TYPE dexec_serve_request_duration_seconds histogram\n");
    write_histo(f, "dexec_serve_request_duration_seconds", "", &S.e2e);
    fprintf(f, "# HELP dexec_serve_stage_duration_seconds Time of each image in each stage: "
               "queue from its submission to the start of its computation (the engine's "
               "queue, then the worker's), the others as the worker measured them.\n"
               "# TYPE dexec_serve_stage_duration_seconds histogram\n");
    for (int s = 0; s < NSTAGES; s++) {
        snprintf(label, sizeof(label), "stage=\"%s\"", stage_names[s]);
        write_histo(f, "dexec_serve_stage_duration_seconds", label, &S.stage[s]);
    }
    fprintf(f, "# HELP dexec_serve_images_total Images generated.\n"
               "# TYPE dexec_serve_images_total counter\ndexec_serve_images_total %" PRIu64 "\n",
            S.images_total);
    for (int i = 0; i < 60; i++)
        if (S.ring_sec[i] > now - 60 && S.ring_sec[i] < now)
            recent += S.ring_n[i];
    window = window < 1 ? 1 : window > 60 ? 60 : window;
    fprintf(f, "# HELP dexec_serve_images_per_second Images generated per second over the last "
               "minute (since start when younger).\n"
               "# TYPE dexec_serve_images_per_second gauge\n"
               "dexec_serve_images_per_second %.3f\n",
            (double)recent / window);
    fprintf(f, "# HELP dexec_serve_rank_busy_seconds_total Time each rank spent encoding, "
               "denoising and decoding.\n# TYPE dexec_serve_rank_busy_seconds_total counter\n");
    for (int r = 0; r < S.nranks; r++)
        fprintf(f, "dexec_serve_rank_busy_seconds_total{rank=\"%d\"} %.6f\n", r, S.rank_busy[r]);
    fprintf(f, "# HELP dexec_serve_worker_errors_total Images a rank failed (the worker replied "
               "with an error or died).\n# TYPE dexec_serve_worker_errors_total counter\n");
    for (int r = 0; r < S.nranks; r++)
        fprintf(f, "dexec_serve_worker_errors_total{rank=\"%d\"} %" PRIu64 "\n", r,
                S.rank_errors[r]);
    if (S.rank_errors[S.nranks] > 0) /* failed where no rank was named (a group's failure) */
        fprintf(f, "dexec_serve_worker_errors_total{rank=\"unknown\"} %" PRIu64 "\n",
                S.rank_errors[S.nranks]);
    if (nstats > 0) {
        fprintf(f, "# HELP dexec_serve_worker_deaths_total Times a rank's worker died or was "
                   "ended as hung.\n# TYPE dexec_serve_worker_deaths_total counter\n");
        for (int r = 0; r < nstats; r++)
            fprintf(f, "dexec_serve_worker_deaths_total{rank=\"%d\"} %" PRIu64 "\n", r,
                    rs[r].deaths);
        fprintf(f, "# HELP dexec_serve_worker_restarts_total Times a rank was started again "
                   "after a death and became ready (max_restarts).\n"
                   "# TYPE dexec_serve_worker_restarts_total counter\n");
        for (int r = 0; r < nstats; r++)
            fprintf(f, "dexec_serve_worker_restarts_total{rank=\"%d\"} %" PRIu64 "\n", r,
                    rs[r].restarts);
    }
    fprintf(f, "# HELP dexec_serve_health_check_failures_total Health checks that failed.\n"
               "# TYPE dexec_serve_health_check_failures_total counter\n"
               "dexec_serve_health_check_failures_total %" PRIu64 "\n",
            S.health_failures);
    fprintf(f, "# HELP dexec_serve_ready 1 when the last health check passed.\n"
               "# TYPE dexec_serve_ready gauge\ndexec_serve_ready %d\n",
            S.ready && !S.draining);
    fprintf(f, "# HELP dexec_serve_ranks Ranks (workers) the engine drives.\n"
               "# TYPE dexec_serve_ranks gauge\ndexec_serve_ranks %d\n",
            S.nranks);
    pthread_mutex_unlock(&S.lock);
    free(rs);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- the job table and engine callbacks -------------------------------------- */

/* S.lock held. */
static job *find_job(uint64_t id)
{
    for (job *j = S.jobs; j != NULL; j = j->next)
        if (j->id == id)
            return j;
    return NULL;
}

/* The callbacks' user pointer is the job id; the image index is the
 * number after the last '#' of the request id ("JOB:RID#INDEX"), set at submit,
 * since the callbacks may run before dexec_engine_submit() returns. */
#define JOB_USER(id) ((void *)(uintptr_t)(id))

static int image_index(dexec_handle *h)
{
    const char *id = dexec_handle_request_id(h), *hash = id != NULL ? strrchr(id, '#') : NULL;

    return hash != NULL ? atoi(hash + 1) : -1;
}

static void wake(job *j)
{
    uint64_t one = 1;

    if (write(j->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        dexec_log(DEXEC_LOG_WARN, COMP, "request %s: eventfd: %s", j->rid, strerror(errno));
}

static void on_progress(void *user, dexec_handle *h, int image, int step, int total)
{
    int i = image_index(h);
    job *j;

    (void)image;
    pthread_mutex_lock(&S.lock);
    j = find_job((uint64_t)(uintptr_t)user);
    if (j != NULL && i >= 0 && i < j->n) {
        /* an image's steps rise within one computation */
        if (step <= j->step[i]) {
            j->restarts[i]++;
            j->lost_step[i] = j->step[i];
        }
        j->step[i] = step;
        j->total[i] = total;
        /* only a stream sends progress; waking a request that waits for its
         * images at every step cost the server a thread wake-up per step */
        if (j->stream)
            wake(j);
    }
    pthread_mutex_unlock(&S.lock);
}

static void on_done(void *user, dexec_handle *h)
{
    int i = image_index(h);
    job *j;

    pthread_mutex_lock(&S.lock);
    j = find_job((uint64_t)(uintptr_t)user);
    if (j != NULL && i >= 0 && i < j->n && !j->done[i]) {
        j->done[i] = 1;
        j->ndone++;
        wake(j);
    }
    pthread_mutex_unlock(&S.lock);
}

/* Releases a job's descriptor and buffers (not its handles). */
static void job_free(job *j)
{
    if (j->efd >= 0)
        close(j->efd);
    free(j->h);
    free(j->step);
    free(j->total);
    free(j->done);
    free(j->sent_step);
    free(j->restarts);
    free(j->lost_step);
    free(j->sent_restarts);
    free(j->emitted);
    free(j->prompt);
    free(j->negative);
    free(j->pend);
    free(j);
}

static job *job_new(int n, const char *prompt, const char *negative, const char *rid)
{
    job *j = calloc(1, sizeof(*j));

    if (j == NULL)
        return NULL;
    j->n = n;
    j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    j->h = calloc((size_t)n, sizeof(*j->h));
    j->step = calloc((size_t)n, sizeof(int));
    j->total = calloc((size_t)n, sizeof(int));
    j->done = calloc((size_t)n, sizeof(int));
    j->sent_step = calloc((size_t)n, sizeof(int));
    j->restarts = calloc((size_t)n, sizeof(int));
    j->lost_step = calloc((size_t)n, sizeof(int));
    j->sent_restarts = calloc((size_t)n, sizeof(int));
    j->emitted = calloc((size_t)n, sizeof(int));
    j->prompt = strdup(prompt);
    j->negative = strdup(negative != NULL ? negative : "");
    j->sock = -1;
    snprintf(j->rid, sizeof(j->rid), "%s", rid);
    if (j->efd < 0 || j->h == NULL || j->step == NULL || j->total == NULL || j->done == NULL ||
        j->sent_step == NULL || j->restarts == NULL || j->lost_step == NULL ||
        j->sent_restarts == NULL || j->emitted == NULL || j->prompt == NULL ||
        j->negative == NULL) {
        job_free(j);
        return NULL;
    }
    pthread_mutex_lock(&S.lock);
    j->id = ++S.next_job;
    j->next = S.jobs;
    S.jobs = j;
    S.in_flight++;
    pthread_mutex_unlock(&S.lock);
    return j;
}

/* Cancels what is not complete, releases the handles and leaves the table:
 * a callback that comes later finds nothing. */
static void job_finish(job *j)
{
    for (int i = 0; i < j->n; i++)
        dexec_handle_free(j->h[i]);
    pthread_mutex_lock(&S.lock);
    for (job **p = &S.jobs; *p != NULL; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    S.in_flight--;
    pthread_mutex_unlock(&S.lock);
    job_free(j);
}

/* Waits up to timeout seconds for a callback of j or for the client to hang
 * up (sock < 0: not watched). 1 when the client is gone. */
static int job_wait(job *j, int sock, double timeout)
{
    struct pollfd p[2] = {{.fd = j->efd, .events = POLLIN}, {.fd = sock, .events = POLLRDHUP}};
    int ms = timeout <= 0 ? 0 : timeout > 1 ? 1000 : (int)(timeout * 1000) + 1;
    int n = poll(p, sock >= 0 ? 2 : 1, ms);
    uint64_t v;

    if (n > 0 && (p[0].revents & POLLIN) && read(j->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        dexec_log(DEXEC_LOG_WARN, COMP, "request %s: eventfd: %s", j->rid, strerror(errno));
    return n > 0 && sock >= 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* ---- HTTP helpers -------------------------------------------------------------- */

typedef struct conn_ctx {
    double start;
    char rid[64];
    char method[16];
    char url[160];
    size_t path;
    int status;
    int stream;
    char *body;
    size_t len;
    int too_big;
} conn_ctx;

static char *b64(const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);

        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* The OpenAI error object. param and code may be NULL (JSON null). */
static char *error_json(const char *msg, const char *type, const char *param, const char *code)
{
    json_t *j = json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", msg, "type", type,
                          "param", param, "code", code);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

    json_decref(j);
    return s;
}

/* Queues body (malloc'd, taken) with status; headers: name, value pairs,
 * NULL-terminated (may be NULL). */
static enum MHD_Result reply(struct MHD_Connection *c, conn_ctx *x, unsigned status,
                             const char *ctype, char *body, const char *const *headers)
{
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (body == NULL) {
        status = MHD_HTTP_INTERNAL_SERVER_ERROR;
        ctype = "application/json";
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
        if (body == NULL)
            return MHD_NO;
    }
    r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "X-Request-Id", x->rid);
    for (int i = 0; headers != NULL && headers[i] != NULL; i += 2)
        MHD_add_response_header(r, headers[i], headers[i + 1]);
    x->status = (int)status;
    ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, conn_ctx *x, unsigned status,
                                   const char *type, const char *param, const char *code,
                                   const char *const *headers, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

static enum MHD_Result reply_error(struct MHD_Connection *c, conn_ctx *x, unsigned status,
                                   const char *type, const char *param, const char *code,
                                   const char *const *headers, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return reply(c, x, status, "application/json", error_json(msg, type, param, code), headers);
}

static enum MHD_Result reply_json(struct MHD_Connection *c, conn_ctx *x, unsigned status,
                                  json_t *j)
{
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

    json_decref(j);
    return reply(c, x, status, "application/json", s, NULL);
}

static int authorized(struct MHD_Connection *c, int *missing)
{
    const char *h;

    *missing = 0;
    if (S.token == NULL)
        return 1;
    h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0) {
        *missing = 1;
        return 0;
    }
    h += 7;
    while (*h == ' ')
        h++;
    return dexec_secret_equal(h, S.token);
}

static int client_socket(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);

    return ci != NULL ? ci->connect_fd : -1;
}

/* ---- generation ------------------------------------------------------------------ */

typedef struct gen_params {
    const char *prompt, *negative, *sampler;
    int n, width, height, steps, stream;
    double guidance;
    int64_t seed;
} gen_params;

/* Checks the request body. 0, or the HTTP status with *param, *code and msg
 * set for the error object. */
static unsigned parse_request(json_t *body, gen_params *g, const char **param, const char **code,
                              char *msg, size_t msglen)
{
    static const char *const known[] = {"prompt",
                                        "n",
                                        "size",
                                        "response_format",
                                        "model",
                                        "negative_prompt",
                                        "num_inference_steps",
                                        "guidance_scale",
                                        "seed",
                                        "sampler",
                                        "stream",
                                        "user",
                                        NULL};
    const char *key;
    json_t *v;

    *code = NULL;
    *param = NULL;
    memset(g, 0, sizeof(*g));
    g->n = 1;
    g->guidance = -1;
    g->seed = -1;
    if (!json_is_object(body)) {
        snprintf(msg, msglen, "the request body must be a JSON object");
        return 400;
    }
    json_object_foreach(body, key, v) {
        int ok = 0;

        for (int i = 0; known[i] != NULL; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            *param = NULL;
            snprintf(msg, msglen, "unknown field '%.64s' (accepted: prompt, n, size, "
                                  "response_format, model, negative_prompt, "
                                  "num_inference_steps, guidance_scale, seed, sampler, stream, "
                                  "user)",
                     key);
            return 400;
        }
    }
#define BAD(field, ...)                                                                        \
    do {                                                                                       \
        *param = field;                                                                        \
        snprintf(msg, msglen, __VA_ARGS__);                                                    \
        return 400;                                                                            \
    } while (0)
    v = json_object_get(body, "prompt");
    if (v == NULL)
        BAD("prompt", "prompt is required");
    if (!json_is_string(v))
        BAD("prompt", "prompt must be a string");
    if ((long)json_string_length(v) > S.max_prompt)
        BAD("prompt", "prompt is %zu bytes, above serve.max_prompt_bytes = %ld",
            json_string_length(v), S.max_prompt);
    g->prompt = json_string_value(v);
    if ((v = json_object_get(body, "negative_prompt")) != NULL && !json_is_null(v)) {
        if (!json_is_string(v))
            BAD("negative_prompt", "negative_prompt must be a string");
        if ((long)json_string_length(v) > S.max_prompt)
            BAD("negative_prompt", "negative_prompt is %zu bytes, above serve.max_prompt_bytes "
                                   "= %ld",
                json_string_length(v), S.max_prompt);
        g->negative = json_string_value(v);
    }
    if ((v = json_object_get(body, "n")) != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > S.max_images)
            BAD("n", "n must be an integer in 1..%ld (serve.max_images)", S.max_images);
        /* the images of one request are queued together: more than the
         * queue holds would be 429 (retry later) for ever */
        if (json_integer_value(v) > S.max_queued)
            BAD("n",
                "n = %lld images can never wait together in engine.max_queued = %ld: ask "
                "for at most %ld, or raise engine.max_queued",
                (long long)json_integer_value(v), S.max_queued, S.max_queued);
        g->n = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "size")) != NULL && !json_is_null(v)) {
        const char *s = json_string_value(v);
        char *end;
        long w, h;

        if (s == NULL)
            BAD("size", "size must be a string WIDTHxHEIGHT, e.g. \"32x32\"");
        errno = 0;
        w = s[0] >= '0' && s[0] <= '9' ? strtol(s, &end, 10) : -1;
        if (w < 0 || *end != 'x' || !(end[1] >= '0' && end[1] <= '9'))
            BAD("size", "size must be WIDTHxHEIGHT, e.g. \"32x32\", got \"%.32s\"", s);
        h = strtol(end + 1, &end, 10);
        if (*end != '\0' || errno != 0)
            BAD("size", "size must be WIDTHxHEIGHT, e.g. \"32x32\", got \"%.32s\"", s);
        if (w < 1 || h < 1 || w > DEXEC_MAX_IMAGE_SIZE || h > DEXEC_MAX_IMAGE_SIZE)
            BAD("size", "size %.32s: each side must be in 1..%d", s, DEXEC_MAX_IMAGE_SIZE);
        g->width = (int)w;
        g->height = (int)h;
    }
    if ((v = json_object_get(body, "response_format")) != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || strcmp(json_string_value(v), "b64_json") != 0)
            BAD("response_format", "response_format must be \"b64_json\" (this server keeps no "
                                   "files to point a \"url\" at)");
    }
    if ((v = json_object_get(body, "num_inference_steps")) != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > DEXEC_MAX_STEPS)
            BAD("num_inference_steps", "num_inference_steps must be an integer in 1..%d",
                DEXEC_MAX_STEPS);
        g->steps = (int)json_integer_value(v);
    }
    if ((v = json_object_get(body, "guidance_scale")) != NULL && !json_is_null(v)) {
        if (!json_is_number(v) || json_number_value(v) < 0 ||
            json_number_value(v) > DEXEC_MAX_GUIDANCE)
            BAD("guidance_scale", "guidance_scale must be a number in 0..%g", DEXEC_MAX_GUIDANCE);
        g->guidance = json_number_value(v);
        if (S.par_cfg > 1 && g->guidance == 1.0)
            BAD("guidance_scale", "guidance_scale 1 turns classifier-free guidance off, and this "
                                  "server's ranks compute the two branches of guidance in pairs "
                                  "(parallel.cfg = %d): ask for another guidance_scale, or leave "
                                  "it out for the model's default",
                S.par_cfg);
    }
    if ((v = json_object_get(body, "seed")) != NULL && !json_is_null(v)) {
        if (!json_is_integer(v))
            BAD("seed", "seed must be an integer (negative or null: random)");
        g->seed = json_integer_value(v) < 0 ? -1 : (int64_t)json_integer_value(v);
        if (g->seed > INT64_MAX - (g->n - 1))
            BAD("seed", "seed %" PRId64 " with n %d: image %d would need a seed above %" PRId64,
                g->seed, g->n, g->n - 1, INT64_MAX);
    }
    if ((v = json_object_get(body, "sampler")) != NULL && !json_is_null(v)) {
        static const char *const samplers[] = {"ddpm", "ddim", "euler", "heun", NULL};
        const char *m = json_string_value(v);
        int i = 0;

        while (m != NULL && samplers[i] != NULL && strcmp(m, samplers[i]) != 0)
            i++;
        if (m == NULL || samplers[i] == NULL)
            BAD("sampler", "sampler must be \"ddpm\" or \"ddim\" (DiT models) or \"euler\" or "
                           "\"heun\" (SiT models; the bundled model: \"euler\"); absent or null: "
                           "the model's own");
        g->sampler = m;
    }
    if ((v = json_object_get(body, "stream")) != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v))
            BAD("stream", "stream must be true or false");
        g->stream = json_is_true(v);
    }
    if ((v = json_object_get(body, "user")) != NULL && !json_is_null(v) && !json_is_string(v))
        BAD("user", "user must be a string");
    if ((v = json_object_get(body, "model")) != NULL && !json_is_null(v)) {
        const char *m = json_string_value(v);

        if (m == NULL)
            BAD("model", "model must be a string");
        if (strcmp(m, S.model_id) != 0 && strcmp(m, S.model_key) != 0) {
            *param = "model";
            *code = "model_not_found";
            snprintf(msg, msglen, "model '%.128s' not found: this server serves '%s' (GET "
                                  "/v1/models)",
                     m, S.model_id);
            return 404;
        }
    }
#undef BAD
    return 0;
}

/* One image's PNG as base64 (caller frees), or NULL with msg. */
static char *image_b64(const job *j, const dexec_output *o, char *msg, size_t msglen)
{
    char seed_s[32], steps_s[16], cfg_s[32];
    const char *text[] = {"prompt",   j->prompt, "negative_prompt", j->negative,
                          "seed",     seed_s,    "steps",           steps_s,
                          "guidance_scale", cfg_s, "model",         S.model_id,
                          "Software", "dexec " PACKAGE_VERSION, NULL};
    unsigned char *png = NULL;
    size_t len = 0;
    char *s;

    snprintf(seed_s, sizeof(seed_s), "%" PRId64, o->seed);
    snprintf(steps_s, sizeof(steps_s), "%d", o->steps);
    snprintf(cfg_s, sizeof(cfg_s), "%g", o->guidance_scale);
    if (o->num_images < 1) {
        snprintf(msg, msglen, "the worker returned no image");
        return NULL;
    }
    if (cli_png_encode(&o->images[0], text, &png, &len, msg, msglen) != 0)
        return NULL;
    s = b64(png, len);
    free(png);
    if (s == NULL)
        snprintf(msg, msglen, "out of memory encoding the image");
    return s;
}

/* The HTTP status, error type and code for an image's failure. */
static unsigned output_status(dexec_status st, const char **type, const char **code)
{
    *type = "server_error";
    switch (st) {
    case DEXEC_EINVAL:
        *type = "invalid_request_error";
        *code = NULL;
        return 400;
    case DEXEC_ETIMEDOUT:
        *code = "timeout";
        return 504;
    case DEXEC_ECLOSED:
    case DEXEC_ECANCELED:
        *code = "shutting_down";
        return 503;
    case DEXEC_EWORKER:
        *code = "worker_error";
        return 500;
    default:
        *code = NULL;
        return 500;
    }
}

/* The request field a worker's refusal (DEXEC_EINVAL) concerns, for the
 * error object's param: the worker's messages begin with the field they
 * refuse (kernels/model.c: "sampler 'ddim' does not fit this model",
 * "image size 48x48 ...", "prompt 'x' names no class ..."). NULL when the
 * message names none. */
static const char *output_param(const dexec_output *o)
{
    static const struct {
        const char *prefix, *param;
    } fields[] = {
        {"sampler ", "sampler"},
        {"image size ", "size"},
        {"num_inference_steps ", "num_inference_steps"},
        {"guidance_scale ", "guidance_scale"},
        {"negative_prompt", "negative_prompt"},
        {"prompt ", "prompt"},
        {"seed ", "seed"},
    };

    const char *e = o->error, *c;

    if (o->status != DEXEC_EINVAL || e == NULL)
        return NULL;
    /* past what names the computer: "group 0 (ranks 0-1): rank 0: " */
    while ((strncmp(e, "group ", 6) == 0 || strncmp(e, "rank ", 5) == 0) &&
           (c = strstr(e, ": ")) != NULL)
        e = c + 2;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (strncmp(e, fields[i].prefix, strlen(fields[i].prefix)) == 0)
            return fields[i].param;
    return NULL;
}

/* The message of a failed output, naming its rank. */
static void output_error(const dexec_output *o, int index, char *msg, size_t msglen)
{
    const char *e = o->error != NULL ? o->error : dexec_status_name(o->status);

    if (o->rank >= 0 && strstr(e, "rank") == NULL)
        snprintf(msg, msglen, "image %d: rank %d: %s", index, o->rank, e);
    else
        snprintf(msg, msglen, "image %d: %s", index, e);
}

/* Submits the images of a request as one submission: the engine gives
 * each to the next free rank, so they run in parallel, and a full queue
 * refuses all of them or none. The callbacks
 * are per image. 0, or the HTTP status of a refusal. */
static unsigned submit_job(job *j, const gen_params *g, const char **type, const char **code,
                           char *msg, size_t msglen)
{
    dexec_request *r = calloc((size_t)j->n, sizeof(*r));
    dexec_callbacks cb;
    dexec_status st = DEXEC_OK;
    int ok = r != NULL;

    for (int i = 0; ok && i < j->n; i++) {
        char id[96];

        dexec_request_init(&r[i]);
        snprintf(id, sizeof(id), "%" PRIu64 ":%s#%d", j->id, j->rid, i);
        ok = (r[i].request_id = strdup(id)) != NULL;
    }
    if (!ok) {
        for (int i = 0; r != NULL && i < j->n; i++)
            free((char *)r[i].request_id);
        free(r);
        snprintf(msg, msglen, "out of memory");
        *type = "server_error";
        *code = NULL;
        return 500;
    }
    for (int i = 0; i < j->n; i++) {
        r[i].prompt = g->prompt;
        r[i].negative_prompt = g->negative;
        r[i].width = g->width;
        r[i].height = g->height;
        r[i].num_inference_steps = g->steps;
        r[i].guidance_scale = g->guidance;
        r[i].seed = g->seed >= 0 ? g->seed + i : -1;
        r[i].sampler = g->sampler;
    }
    dexec_callbacks_init(&cb);
    cb.progress = on_progress;
    cb.done = on_done;
    cb.user = JOB_USER(j->id);
    st = dexec_engine_submit(S.e, r, (size_t)j->n, &cb, j->h);
    for (int i = 0; i < j->n; i++)
        free((char *)r[i].request_id);
    free(r);
    if (st == DEXEC_OK)
        return 0;
    snprintf(msg, msglen, "%s", dexec_engine_last_error(S.e));
    memset(j->h, 0, (size_t)j->n * sizeof(*j->h));
    *code = NULL;
    *type = "invalid_request_error";
    if (st == DEXEC_EAGAIN) {
        *type = "rate_limit_error";
        *code = "queue_full";
        return 429;
    }
    if (st == DEXEC_EINVAL)
        return 400;
    *type = "server_error";
    if (st == DEXEC_ECLOSED) {
        *code = "shutting_down";
        return 503;
    }
    return 500;
}

static void append(job *j, const char *s, size_t n)
{
    char *p = realloc(j->pend, j->plen + n + 1);

    if (p == NULL)
        return;
    memcpy(p + j->plen, s, n);
    j->pend = p;
    j->plen += n;
    p[j->plen] = '\0';
}

/* Appends "event: TYPE\ndata: JSON\n\n" and takes obj. */
static void event(job *j, const char *type, json_t *obj)
{
    char *s = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;

    json_decref(obj);
    if (s == NULL)
        return;
    append(j, "event: ", 7);
    append(j, type, strlen(type));
    append(j, "\ndata: ", 7);
    append(j, s, strlen(s));
    append(j, "\n\n", 2);
    free(s);
}

static json_t *error_obj(const char *msg, const char *type, const char *param, const char *code)
{
    return json_pack("{s:s,s:s,s:s?,s:s?}", "message", msg, "type", type, "param", param, "code",
                     code);
}

/* Adds the events that are due: progress, finished images, the end. */
static void stream_collect(job *j)
{
    int *step = malloc((size_t)j->n * sizeof(int)), *done = malloc((size_t)j->n * sizeof(int));
    int stopping;
    char msg[2048];

    if (step == NULL || done == NULL) {
        free(step);
        free(done);
        return;
    }
    pthread_mutex_lock(&S.lock);
    memcpy(step, j->step, (size_t)j->n * sizeof(int));
    memcpy(done, j->done, (size_t)j->n * sizeof(int));
    stopping = S.stopping;
    for (int i = 0; i < j->n; i++) {
        if (j->emitted[i])
            continue;
        /* said before the progress that counts from step 1 again */
        if (j->restarts[i] != j->sent_restarts[i]) {
            event(j, "restart",
                  json_pack("{s:i,s:i,s:i}", "index", i, "attempt", j->restarts[i] + 1,
                            "lost_at_step", j->lost_step[i]));
            j->sent_restarts[i] = j->restarts[i];
            j->sent_step[i] = 0;
        }
        if (!done[i] && step[i] != j->sent_step[i]) {
            event(j, "progress",
                  json_pack("{s:i,s:i,s:i}", "index", i, "step", step[i], "total_steps",
                            j->total[i]));
            j->sent_step[i] = step[i];
        }
    }
    pthread_mutex_unlock(&S.lock);
    for (int i = 0; i < j->n; i++) {
        dexec_output o;
        const char *type, *code;
        char *b;

        if (j->emitted[i] || !done[i])
            continue;
        dexec_output_init(&o);
        j->emitted[i] = 1;
        j->nemitted++;
        if (dexec_handle_take_output(j->h[i], &o) != DEXEC_OK)
            continue;
        record_output(&o);
        if (o.status != DEXEC_OK) {
            output_status(o.status, &type, &code);
            output_error(&o, i, msg, sizeof(msg));
            event(j, "error",
                  json_pack("{s:i,s:o}", "index", i, "error",
                            error_obj(msg, type, output_param(&o), code)));
        } else if ((b = image_b64(j, &o, msg, sizeof(msg))) != NULL) {
            event(j, "image", json_pack("{s:i,s:s,s:I,s:i,s:f,s:i}", "index", i, "b64_json", b,
                                        "seed", (json_int_t)o.seed, "num_inference_steps",
                                        o.steps, "guidance_scale", o.guidance_scale, "rank",
                                        o.rank));
            free(b);
            j->nok++;
        } else {
            event(j, "error",
                  json_pack("{s:i,s:o}", "index", i, "error",
                            error_obj(msg, "server_error", NULL, NULL)));
        }
        dexec_output_clear(&o);
    }
    free(step);
    free(done);
    if (j->nemitted == j->n) {
        event(j, "done", json_pack("{s:I,s:i,s:i}", "created", (json_int_t)time(NULL), "images",
                                   j->nok, "errors", j->n - j->nok));
        j->finished = 1;
    } else if (dexec_now() >= j->deadline) {
        snprintf(msg, sizeof(msg), "request %s passed its deadline of serve.request_timeout = %g s "
                                   "with %d of %d image(s) not done",
                 j->rid, S.request_timeout, j->n - j->nemitted, j->n);
        event(j, "error",
              json_pack("{s:o}", "error", error_obj(msg, "server_error", NULL, "timeout")));
        j->finished = 1;
    } else if (stopping) {
        event(j, "error",
              json_pack("{s:o}", "error",
                        error_obj("the server is shutting down and its drain grace "
                                  "(serve.drain_grace) is over: retry on another instance",
                                  "server_error", NULL, "shutting_down")));
        j->finished = 1;
    }
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    job *j = cls;

    (void)pos;
    for (;;) {
        double now;

        if (j->poff < j->plen) {
            size_t n = j->plen - j->poff < max ? j->plen - j->poff : max;

            memcpy(buf, j->pend + j->poff, n);
            j->poff += n;
            j->last_write = dexec_now();
            return (ssize_t)n;
        }
        free(j->pend);
        j->pend = NULL;
        j->plen = j->poff = 0;
        if (j->finished)
            return MHD_CONTENT_READER_END_OF_STREAM;
        stream_collect(j);
        if (j->plen > 0)
            continue;
        now = dexec_now();
        if (now - j->last_write >= 15) {
            append(j, ": keep-alive\n\n", 14);
            continue;
        }
        if (job_wait(j, j->sock, j->deadline - now))
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void stream_free(void *cls)
{
    job_finish(cls);
}

/* Waits for every image of j (not streaming) and answers. */
static enum MHD_Result answer_job(struct MHD_Connection *c, conn_ctx *x, job *j)
{
    static const char *const close_hdr[] = {"Connection", "close", NULL};
    int sock = client_socket(c);
    json_t *data, *resp;
    char msg[2048];

    for (;;) {
        int ndone, stopping;
        double now = dexec_now();

        int failed = 0;

        pthread_mutex_lock(&S.lock);
        ndone = j->ndone;
        stopping = S.stopping;
        for (int i = 0; i < j->n && !failed; i++)
            failed = j->done[i] && dexec_handle_output(j->h[i]) != NULL &&
                     dexec_handle_output(j->h[i])->status != DEXEC_OK;
        pthread_mutex_unlock(&S.lock);
        /* one image failed: the answer is that error, the others are not
         * worth waiting for */
        if (ndone == j->n || failed)
            break;
        if (stopping) {
            job_finish(j);
            return reply_error(c, x, 503, "server_error", NULL, "shutting_down", close_hdr,
                               "the server is shutting down and its drain grace "
                               "(serve.drain_grace) is over: retry on another instance");
        }
        if (now >= j->deadline) {
            int left = j->n - ndone, n = j->n;

            job_finish(j);
            return reply_error(c, x, 504, "server_error", NULL, "timeout", NULL,
                               "request %s passed its deadline of serve.request_timeout = %g s "
                               "with %d of %d image(s) not done",
                               x->rid, S.request_timeout, left, n);
        }
        if (job_wait(j, sock, j->deadline - now)) {
            dexec_log(DEXEC_LOG_INFO, COMP, "request %s: the client hung up: %d image(s) cancelled",
                      x->rid, j->n - ndone);
            job_finish(j);
            x->status = 499;
            return MHD_NO;
        }
    }
    data = json_array();
    for (int i = 0; i < j->n; i++) {
        dexec_output o;
        const char *type, *code;
        char *b;

        dexec_output_init(&o);
        if (dexec_handle_get_state(j->h[i]) != DEXEC_HANDLE_DONE)
            continue; /* another image failed: this one is cancelled below */
        if (dexec_handle_take_output(j->h[i], &o) != DEXEC_OK) {
            json_decref(data);
            job_finish(j);
            return reply_error(c, x, 500, "server_error", NULL, NULL, NULL,
                               "image %d: its output was lost", i);
        }
        record_output(&o);
        if (o.status != DEXEC_OK) {
            unsigned st = output_status(o.status, &type, &code);
            const char *param = output_param(&o);

            output_error(&o, i, msg, sizeof(msg));
            dexec_output_clear(&o);
            json_decref(data);
            job_finish(j);
            return reply_error(c, x, st, type, param, code, NULL, "%s", msg);
        }
        b = image_b64(j, &o, msg, sizeof(msg));
        if (b == NULL) {
            dexec_output_clear(&o);
            json_decref(data);
            job_finish(j);
            return reply_error(c, x, 500, "server_error", NULL, NULL, NULL, "image %d: %s", i,
                               msg);
        }
        json_array_append_new(data, json_pack("{s:s,s:I,s:i,s:f,s:i}", "b64_json", b, "seed",
                                              (json_int_t)o.seed, "num_inference_steps", o.steps,
                                              "guidance_scale", o.guidance_scale, "rank",
                                              o.rank));
        free(b);
        dexec_output_clear(&o);
    }
    job_finish(j);
    resp = json_pack("{s:I,s:o}", "created", (json_int_t)time(NULL), "data", data);
    return reply_json(c, x, 200, resp);
}

/* Waits until the worker has accepted a streaming request: one of its
 * images made a step or completed. 1 then; 0 when an image failed before
 * any started (a sampler, size or prompt the model refuses: the worker
 * checks the request before its first step), the deadline passed, the
 * server stops or the client hung up: answer_job() then answers as for a
 * request without stream, with the failure's status and error object,
 * rather than 200 and an error event. */
static int stream_accepted(job *j, int sock)
{
    for (;;) {
        int started = 0, failed = 0, stopping;
        double now = dexec_now();

        pthread_mutex_lock(&S.lock);
        stopping = S.stopping;
        for (int i = 0; i < j->n; i++) {
            const dexec_output *o = j->done[i] ? dexec_handle_output(j->h[i]) : NULL;

            started |= j->step[i] > 0 || (o != NULL && o->status == DEXEC_OK);
            failed |= o != NULL && o->status != DEXEC_OK;
        }
        pthread_mutex_unlock(&S.lock);
        if (started)
            return 1;
        if (failed || stopping || now >= j->deadline || job_wait(j, sock, j->deadline - now))
            return 0;
    }
}

static enum MHD_Result generate(struct MHD_Connection *c, conn_ctx *x)
{
    static const char *const close_hdr[] = {"Connection", "close", NULL};
    static const char *const retry_hdr[] = {"Retry-After", "1", NULL};
    const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
    const char *param, *code, *type;
    char msg[2048];
    json_error_t jerr;
    json_t *body;
    gen_params g;
    unsigned st;
    job *j;
    int draining, ready;

    pthread_mutex_lock(&S.lock);
    draining = S.draining;
    ready = S.ready;
    snprintf(msg, sizeof(msg), "%s", S.ready_msg);
    pthread_mutex_unlock(&S.lock);
    if (draining)
        return reply_error(c, x, 503, "server_error", NULL, "shutting_down", close_hdr,
                           "the server is shutting down: retry on another instance");
    if (!ready)
        return reply_error(c, x, 503, "server_error", NULL, "unhealthy", retry_hdr,
                           "the engine is unhealthy: %s", msg);
    body = json_loadb(x->body != NULL ? x->body : "", x->len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return reply_error(c, x, 400, "invalid_request_error", NULL, NULL, NULL,
                           "the request body is not valid JSON: %s (line %d, column %d)",
                           jerr.text, jerr.line, jerr.column);
    st = parse_request(body, &g, &param, &code, msg, sizeof(msg));
    if (st != 0) {
        json_decref(body);
        return reply_error(c, x, st, "invalid_request_error", param, code, NULL, "%s", msg);
    }
    if (accept != NULL && strstr(accept, "text/event-stream") != NULL)
        g.stream = 1;
    j = job_new(g.n, g.prompt, g.negative, x->rid);
    if (j == NULL) {
        json_decref(body);
        return reply_error(c, x, 500, "server_error", NULL, NULL, NULL, "out of memory");
    }
    j->deadline = x->start + S.request_timeout;
    j->stream = g.stream;
    st = submit_job(j, &g, &type, &code, msg, sizeof(msg));
    json_decref(body);
    if (st != 0) {
        job_finish(j);
        return reply_error(c, x, st, type, NULL, code, st == 429 ? retry_hdr : NULL, "%s", msg);
    }
    if (g.stream) {
        struct MHD_Response *r;
        enum MHD_Result ret;

        j->sock = client_socket(c);
        if (!stream_accepted(j, j->sock))
            return answer_job(c, x, j);
        j->last_write = dexec_now();
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_read, j,
                                              stream_free);
        if (r == NULL) {
            job_finish(j);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Request-Id", x->rid);
        x->status = 200;
        ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return ret;
    }
    return answer_job(c, x, j);
}

/* ---- routing ---------------------------------------------------------------------- */

static enum MHD_Result ready_endpoint(struct MHD_Connection *c, conn_ctx *x)
{
    static const char *const retry_hdr[] = {"Retry-After", "5", NULL};
    int draining;
    dexec_status st;
    char msg[1024] = "";

    pthread_mutex_lock(&S.lock);
    draining = S.draining;
    pthread_mutex_unlock(&S.lock);
    if (draining)
        return reply_error(c, x, 503, "server_error", NULL, "shutting_down", NULL,
                           "the server is shutting down");
    st = dexec_engine_check_health(S.e);
    if (st != DEXEC_OK)
        snprintf(msg, sizeof(msg), "%s", dexec_engine_last_error(S.e));
    pthread_mutex_lock(&S.lock);
    S.ready = st == DEXEC_OK;
    snprintf(S.ready_msg, sizeof(S.ready_msg), "%s", msg);
    S.health_failures += st != DEXEC_OK;
    pthread_mutex_unlock(&S.lock);
    if (st != DEXEC_OK)
        return reply_error(c, x, 503, "server_error", NULL, "unhealthy", retry_hdr,
                           "the engine is unhealthy: %s", msg);
    return reply_json(c, x, 200,
                      json_pack("{s:s,s:i,s:s}", "status", "ready", "ranks", S.nranks,
                                "backend", dexec_engine_backend(S.e)));
}

static enum MHD_Result route(struct MHD_Connection *c, conn_ctx *x, const char *url,
                             const char *method)
{
    static const char *const auth_hdr[] = {"WWW-Authenticate", "Bearer", NULL};
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int post = strcmp(method, "POST") == 0;
    int missing;
    const char *allow[] = {"Allow", NULL, NULL};

    if (x->path == NPATHS - 1)
        return reply_error(c, x, 404, "invalid_request_error", NULL, "not_found", NULL,
                           "no such endpoint: %.16s %.128s (see GET / or dexec(1))", method, url);
    allow[1] = x->path == 1 ? "POST" : "GET, HEAD";
    if ((x->path == 1 && !post) || (x->path != 1 && !get))
        return reply_error(c, x, 405, "invalid_request_error", NULL, "method_not_allowed", allow,
                           "%.16s %s: use %s", method, url, allow[1]);
    if (x->path == 0)
        return reply(c, x, 200, "text/html; charset=utf-8", strdup(serve_page_html), NULL);
    if (x->path == 3)
        return reply_json(c, x, 200, json_pack("{s:s}", "status", "ok"));
    if (x->path == 4)
        return ready_endpoint(c, x);
    if (!authorized(c, &missing))
        return reply_error(c, x, 401, "invalid_request_error", NULL, "invalid_api_key", auth_hdr,
                           missing ? "missing bearer token: send Authorization: Bearer TOKEN "
                                     "with the token of serve.token_file"
                                   : "wrong bearer token: send the token of serve.token_file");
    if (x->path == 2)
        return reply_json(c, x, 200,
                          json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id",
                                    S.model_id, "object", "model", "created",
                                    (json_int_t)S.started, "owned_by", "dexec"));
    if (x->path == 5)
        return reply(c, x, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(), NULL);
    return MHD_YES; /* generations: the body comes next */
}

static void safe_copy(char *dst, size_t n, const char *src)
{
    size_t i = 0;

    for (; src != NULL && src[i] != '\0' && i + 1 < n; i++)
        dst[i] = (src[i] > ' ' && src[i] < 127) ? src[i] : '?';
    dst[i] = '\0';
}

static int valid_request_id(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (n == 0 || n > 63)
        return 0;
    for (; *s != '\0'; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size, void **ctx)
{
    conn_ctx *x = *ctx;

    (void)cls;
    (void)version;
    if (x == NULL) {
        const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        enum MHD_Result ret;

        x = calloc(1, sizeof(*x));
        if (x == NULL)
            return MHD_NO;
        *ctx = x;
        x->start = dexec_now();
        safe_copy(x->method, sizeof(x->method), method);
        safe_copy(x->url, sizeof(x->url), url);
        x->path = path_index(url);
        if (valid_request_id(rid)) {
            snprintf(x->rid, sizeof(x->rid), "%s", rid);
        } else {
            pthread_mutex_lock(&S.lock);
            snprintf(x->rid, sizeof(x->rid), "http-%" PRIu64, ++S.next_rid);
            pthread_mutex_unlock(&S.lock);
        }
        ret = route(c, x, url, method);
        if (x->status != 0 || ret == MHD_NO)
            return ret;
        if (cl != NULL && strtoull(cl, NULL, 10) > (unsigned long long)S.max_body)
            return reply_error(c, x, 413, "invalid_request_error", NULL, "body_too_large",
                               (const char *const[]){"Connection", "close", NULL},
                               "the request body is %s bytes, above serve.max_body_bytes = %ld",
                               cl, S.max_body);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!x->too_big && x->len + *upload_data_size <= (size_t)S.max_body) {
            char *p = realloc(x->body, x->len + *upload_data_size + 1);

            if (p == NULL)
                return MHD_NO;
            memcpy(p + x->len, upload_data, *upload_data_size);
            x->body = p;
            x->len += *upload_data_size;
            p[x->len] = '\0';
        } else {
            x->too_big = 1;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (x->status != 0)
        return MHD_YES;
    if (x->too_big)
        return reply_error(c, x, 413, "invalid_request_error", NULL, "body_too_large",
                           (const char *const[]){"Connection", "close", NULL},
                           "the request body is above serve.max_body_bytes = %ld", S.max_body);
    return generate(c, x);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **ctx,
                         enum MHD_RequestTerminationCode toe)
{
    conn_ctx *x = *ctx;
    double took;
    int status;

    (void)cls;
    (void)c;
    if (x == NULL)
        return;
    took = dexec_now() - x->start;
    status = x->status != 0 ? x->status : 499;
    if (status == 200 && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        status = 499; /* the stream ended before its last event was sent */
    pthread_mutex_lock(&S.lock);
    count_status(x->path, status);
    if (x->path == 1 && status == 200)
        histo_add(&S.e2e, took);
    pthread_mutex_unlock(&S.lock);
    dexec_log(DEXEC_LOG_INFO, COMP, "%s %s %d %.3fs id=%s", x->method, x->url, status, took,
              x->rid);
    free(x->body);
    free(x);
    *ctx = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[1024];
    size_t n;

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n')
        msg[--n] = '\0';
    /* what a handler returning MHD_NO (a client that hung up) leads to */
    dexec_log(strncmp(msg, "Application reported internal error", 35) == 0 ? DEXEC_LOG_DEBUG
                                                                             : DEXEC_LOG_WARN,
              COMP, "libmicrohttpd: %s", msg);
}

/* ---- the command -------------------------------------------------------------------- */

static int is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static void serve_usage(FILE *out)
{
    fprintf(out,
            "Usage: dexec serve [OPTIONS]\n\n"
            "Starts one engine and serves it over HTTP until SIGTERM or SIGINT: the OpenAI\n"
            "Images API (POST /v1/images/generations, GET /v1/models), GET /health, GET\n"
            "/ready, GET /metrics (Prometheus) and a page to try it at /.\n\n"
            "  -l, --listen HOST:PORT     address to listen on (serve.listen, default\n"
            "                             127.0.0.1:8000; port 0 picks a free one)\n"
            "      --token-file FILE      bearer token clients must send (serve.token_file)\n"
            "      --insecure             allow a non-loopback address without a token\n"
            "      --request-timeout S    deadline of one request (serve.request_timeout)\n"
            "      --drain-grace S        time in-flight requests get on SIGTERM\n"
            "                             (serve.drain_grace)\n"
            "      --max-queued N         images waiting for a rank before 429\n"
            "                             (engine.max_queued)\n"
            "%s",
            cli_engine_opts_help);
}

static const struct {
    const char *s, *l, *key;
} serve_flags[] = {
    {"-l", "--listen", "serve.listen"},
    {NULL, "--token-file", "serve.token_file"},
    {NULL, "--request-timeout", "serve.request_timeout"},
    {NULL, "--drain-grace", "serve.drain_grace"},
    {NULL, "--max-queued", "engine.max_queued"},
};

/* Parses the options into eo. 0 to go on, else the exit status. */
static int parse_args(int argc, char **argv, cli_engine_opts *eo)
{
    for (int i = 1; i < argc; i++) {
        int r = cli_engine_opt(eo, argc, argv, &i), hit = 0;
        const char *a = argv[i];

        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            serve_usage(stdout);
            return -1;
        }
        if (eo->nset >= (int)(sizeof(eo->set_key) / sizeof(eo->set_key[0]))) {
            fprintf(stderr, "dexec serve: too many options\n");
            return 2;
        }
        if (strcmp(a, "--insecure") == 0) {
            eo->set_key[eo->nset] = "serve.insecure";
            eo->set_val[eo->nset++] = "1";
            continue;
        }
        for (size_t f = 0; f < sizeof(serve_flags) / sizeof(serve_flags[0]) && !hit; f++) {
            size_t n = strlen(serve_flags[f].l);
            const char *v = NULL;

            if ((serve_flags[f].s != NULL && strcmp(a, serve_flags[f].s) == 0) ||
                strcmp(a, serve_flags[f].l) == 0) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "dexec serve: option %s needs a value\n", a);
                    return 2;
                }
                v = argv[++i];
            } else if (strncmp(a, serve_flags[f].l, n) == 0 && a[n] == '=') {
                v = a + n + 1;
            }
            if (v != NULL) {
                eo->set_key[eo->nset] = serve_flags[f].key;
                eo->set_val[eo->nset++] = v;
                hit = 1;
            }
        }
        if (hit)
            continue;
        fprintf(stderr, "dexec serve: unknown option '%s' (see --help)\n", a);
        return 2;
    }
    return 0;
}

/* Reads the serve.* keys into S; resolves the listen address into *ai.
 * 0, or 1 with the error printed (a value refused: exit status CLI_USAGE). */
static int setup(const dexec_config *cfg, struct addrinfo **ai)
{
    const char *listen_s, *token_file, *model;
    int64_t v;
    char host[256], port[16], err[1024];
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    int rc;

    dexec_config_get_string(cfg, "serve.listen", &listen_s);
    dexec_config_get_string(cfg, "serve.token_file", &token_file);
    dexec_config_get_string(cfg, "model", &model);
    dexec_config_get_float(cfg, "serve.request_timeout", &S.request_timeout);
    dexec_config_get_float(cfg, "serve.drain_grace", &S.drain_grace);
    dexec_config_get_int(cfg, "serve.max_body_bytes", &v);
    S.max_body = (long)v;
    dexec_config_get_int(cfg, "serve.max_prompt_bytes", &v);
    S.max_prompt = (long)v;
    dexec_config_get_int(cfg, "serve.max_images", &v);
    S.max_images = (long)v;
    dexec_config_get_int(cfg, "engine.max_queued", &v);
    S.max_queued = (long)v;
    v = 1;
    dexec_config_get_int(cfg, "parallel.cfg", &v);
    S.par_cfg = (int)v;
    S.model_key = model;
    {
        const char *base = strrchr(model, '/') != NULL ? strrchr(model, '/') + 1 : model;
        size_t n = strlen(base);

        if (n > 12 && strcmp(base + n - 12, ".safetensors") == 0)
            n -= 12;
        snprintf(S.model_id, sizeof(S.model_id), "%.*s", (int)n, base);
    }
    if (dexec_split_hostport(listen_s, host, sizeof(host), port, sizeof(port)) != 0) {
        fprintf(stderr, "dexec serve: serve.listen '%s' is not HOST:PORT (e.g. 127.0.0.1:8000)\n",
                listen_s);
        return 1;
    }
    rc = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, ai);
    if (rc != 0) {
        fprintf(stderr, "dexec serve: serve.listen '%s': %s\n", listen_s, gai_strerror(rc));
        return 1;
    }
    if (token_file[0] != '\0' &&
        dexec_token_read(token_file, &S.token, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec serve: serve.token_file: %s\n", err);
        freeaddrinfo(*ai);
        return 1;
    }
    if (!is_loopback((*ai)->ai_addr) && S.token == NULL) {
        dexec_config_get_int(cfg, "serve.insecure", &v);
        if (v == 0) {
            fprintf(stderr,
                    "dexec serve: serve.listen '%s' is not a loopback address: set "
                    "serve.token_file (--token-file FILE) so that clients must send a bearer "
                    "token, or serve.insecure = 1 (--insecure) to serve anyone who can reach it\n",
                    listen_s);
            freeaddrinfo(*ai);
            return 1;
        }
        dexec_log(DEXEC_LOG_WARN, COMP,
                  "listening on %s without a token (serve.insecure = 1): anyone who can reach "
                  "it can generate images and read its metrics",
                  listen_s);
    }
    return 0;
}

static void health_tick(void)
{
    dexec_status st = dexec_engine_check_health(S.e);
    char msg[1024] = "";
    int was;

    if (st != DEXEC_OK)
        snprintf(msg, sizeof(msg), "%s", dexec_engine_last_error(S.e));
    pthread_mutex_lock(&S.lock);
    was = S.ready;
    S.ready = st == DEXEC_OK;
    snprintf(S.ready_msg, sizeof(S.ready_msg), "%s", msg);
    S.health_failures += st != DEXEC_OK;
    pthread_mutex_unlock(&S.lock);
    if (was && st != DEXEC_OK)
        dexec_log(DEXEC_LOG_WARN, COMP, "unhealthy: %s", msg);
    else if (!was && st == DEXEC_OK)
        dexec_log(DEXEC_LOG_WARN, COMP, "healthy again");
}

/* Stops accepting, lets in-flight requests finish within the grace, then
 * cancels the rest. */
static void drain(int sig)
{
    MHD_socket lsock;
    double until;
    int left;

    dexec_log(DEXEC_LOG_WARN, COMP, "%s: draining: no new connections, %g s for in-flight "
                                    "requests",
              strsignal(sig), S.drain_grace);
    pthread_mutex_lock(&S.lock);
    S.draining = 1;
    pthread_mutex_unlock(&S.lock);
    lsock = MHD_quiesce_daemon(S.d);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    until = dexec_now() + S.drain_grace;
    for (;;) {
        pthread_mutex_lock(&S.lock);
        left = S.in_flight;
        pthread_mutex_unlock(&S.lock);
        if (left == 0 || dexec_now() >= until)
            break;
        usleep(20000);
    }
    if (left > 0) {
        dexec_log(DEXEC_LOG_WARN, COMP, "drain grace over: cancelling %d request(s)", left);
        pthread_mutex_lock(&S.lock);
        S.stopping = 1;
        pthread_mutex_unlock(&S.lock);
        until = dexec_now() + 5;
        while (dexec_now() < until) {
            pthread_mutex_lock(&S.lock);
            left = S.in_flight;
            pthread_mutex_unlock(&S.lock);
            if (left == 0)
                break;
            usleep(20000);
        }
    }
}

/* The listening socket, bound before the engine starts so that a port in
 * use is said at once rather than after the workers loaded the model.
 * Returns the fd (CLOEXEC; libmicrohttpd closes it when it stops), or -1
 * with errno set. */
static int listen_socket(const struct addrinfo *ai)
{
    int one = 1, fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), e;

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (ai->ai_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
        e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int cmd_serve(int argc, char **argv)
{
    cli_engine_opts eo = {0};
    dexec_config *cfg;
    struct addrinfo *ai = NULL;
    double health_every, next_health;
    unsigned port = 0;
    sigset_t sigs;
    char err[2048], host[INET6_ADDRSTRLEN + 2];
    int rc, sig = 0, lfd;
    unsigned flags;
    int64_t maxconn;

    rc = parse_args(argc, argv, &eo);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    cfg = cli_engine_config(&eo);
    if (cfg == NULL)
        return CLI_USAGE;
    /* the access log is at level info: show it unless the level was chosen */
    if (strcmp(dexec_config_origin(cfg, "log_level"), "default") == 0 &&
        dexec_log_get_level() < DEXEC_LOG_INFO)
        dexec_log_set_level(DEXEC_LOG_INFO);
    if (setup(cfg, &ai) != 0) {
        dexec_config_free(cfg);
        return CLI_USAGE;
    }
    lfd = listen_socket(ai);
    if (lfd < 0) {
        const char *listen_s = "";

        dexec_config_get_string(cfg, "serve.listen", &listen_s);
        fprintf(stderr,
                "dexec serve: cannot listen on %s: %s (is another server using the "
                "port?)\n",
                listen_s, strerror(errno));
        freeaddrinfo(ai);
        dexec_config_free(cfg);
        free(S.token);
        return 1;
    }
    dexec_config_get_float(cfg, "serve.health_interval", &health_every);
    dexec_config_get_int(cfg, "serve.max_connections", &maxconn);
    /* every thread started from here on (engine, HTTP) leaves these to the
     * main thread's sigtimedwait; the workers' mask is reset at exec */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (dexec_engine_create(cfg, &S.e, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "dexec serve: %s\n", err);
        close(lfd);
        freeaddrinfo(ai);
        dexec_config_free(cfg);
        free(S.token);
        return 1;
    }
    S.nranks = dexec_engine_num_ranks(S.e);
    S.rank_busy = calloc((size_t)S.nranks, sizeof(double));
    S.rank_errors = calloc((size_t)S.nranks + 1, sizeof(uint64_t));
    S.ready = 1;
    S.started = time(NULL);
    S.start = dexec_now();
    flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
            MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (S.rank_busy != NULL && S.rank_errors != NULL)
        S.d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER,
                               mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET, lfd,
                               MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)maxconn,
                               MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_END);
    if (S.d == NULL) {
        const char *listen_s = "";

        dexec_config_get_string(cfg, "serve.listen", &listen_s);
        fprintf(stderr, "dexec serve: libmicrohttpd could not serve %s: %s\n", listen_s,
                errno != 0 ? strerror(errno) : "it refused to start");
        dexec_engine_free(S.e);
        freeaddrinfo(ai);
        dexec_config_free(cfg);
        free(S.token);
        free(S.rank_busy);
        free(S.rank_errors);
        return 1;
    }
    {
        /* the port bound (port 0: the one the kernel picked) */
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);

        if (getsockname(lfd, (struct sockaddr *)&sa, &salen) == 0)
            port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                  : ((struct sockaddr_in *)&sa)->sin_port);
    }
    if (ai->ai_family == AF_INET6) {
        host[0] = '[';
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, host + 1,
                  sizeof(host) - 2);
        strcat(host, "]");
    } else {
        inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, host, sizeof(host));
    }
    printf("dexec serve: %s on %d rank(s), listening on http://%s:%u/\n", S.model_id, S.nranks,
           host, port);
    fflush(stdout);
    freeaddrinfo(ai);
    next_health = dexec_now() + health_every;
    for (;;) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 250000000};

        sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig > 0)
            break;
        if (dexec_now() >= next_health) {
            health_tick();
            next_health = dexec_now() + health_every;
        }
    }
    drain(sig);
    MHD_stop_daemon(S.d);
    dexec_engine_free(S.e);
    dexec_log(DEXEC_LOG_WARN, COMP, "stopped");
    dexec_config_free(cfg);
    free(S.token);
    free(S.rank_busy);
    free(S.rank_errors);
    return 0;
}
