#include "config.h"
#include <stdio.h>
#include "cli.h"
int cmd_rpc(int argc, char **argv) { (void)argc; fprintf(stderr, "dexec %s: not built yet\n", argv[0]); return 1; }
