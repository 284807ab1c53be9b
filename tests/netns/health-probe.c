/*
 * health-probe.c - for multihost.sh: creates an engine from a config file,
 * generates one image, prints "ready", waits for a line on stdin (the
 * script cuts the network meanwhile), then checks health. Exits 0 when
 * check_health failed with DEXEC_EUNHEALTHY within the health deadline
 * plus one second, 1 otherwise.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include <dexec/dexec.h>
#include <dexec/rpc.h>

int main(int argc, char **argv)
{
    dexec_config *cfg = NULL;
    dexec_engine *e = NULL;
    dexec_request req;
    dexec_output *outs = NULL;
    char err[2048], line[16];
    double health = 5.0, t0, took;
    dexec_status st;

    if (argc != 2) {
        fprintf(stderr, "usage: health-probe CONFIG\n");
        return 2;
    }
    if (dexec_config_load(argv[1], &cfg, err, sizeof(err)) != DEXEC_OK ||
        dexec_engine_create(cfg, &e, err, sizeof(err)) != DEXEC_OK) {
        fprintf(stderr, "health-probe: %s\n", err);
        dexec_config_free(cfg);
        return 1;
    }
    dexec_config_get_float(cfg, "timeouts.health", &health);
    dexec_request_init(&req);
    req.prompt = "bag";
    req.num_inference_steps = 2;
    req.seed = 1;
    if (dexec_engine_step(e, &req, 1, &outs, NULL, NULL) != DEXEC_OK ||
        outs[0].status != DEXEC_OK) {
        fprintf(stderr, "health-probe: generate: %s\n", dexec_engine_last_error(e));
        return 1;
    }
    dexec_outputs_free(outs, 1);
    printf("ready\n");
    fflush(stdout);
    if (fgets(line, sizeof(line), stdin) == NULL)
        return 1;
    t0 = dexec_now();
    st = dexec_engine_check_health(e);
    took = dexec_now() - t0;
    printf("check_health: %s after %.2f s (deadline %.3g s): %s\n", dexec_status_name(st), took,
           health, dexec_engine_last_error(e));
    /* the shutdown RPC is lost on the cut link: close gives up after
     * timeouts.shutdown_grace, and the node agent stops the actor once it
     * sees our connection drop */
    dexec_engine_free(e);
    dexec_config_free(cfg);
    return st == DEXEC_EUNHEALTHY && took <= health + 1.0 ? 0 : 1;
}
