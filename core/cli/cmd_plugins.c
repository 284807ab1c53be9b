#include "config.h"
#include <stdio.h>
#include "cli.h"
int cmd_plugins(int argc, char **argv) { (void)argc; fprintf(stderr, "dexec %s: not built yet\n", argv[0]); return 1; }
