/* A program linked against the driver with -lcuda: every call binds at load time to the
 * exported symbol it names (the door an LD_PRELOAD interposer sees through symbol lookup).
 *
 *   alloc_linked <cmd> [args] [<cmd> [args] ...]     (commands: commands.h, README.md)
 */
#define _GNU_SOURCE
#include "commands.h"

int main(int argc, char **argv)
{
    struct cu_api api;
#define LINKED(sym, base, version, flags) api.sym = sym;
    CU_API(LINKED)
#undef LINKED
    return run_commands(&api, argc, argv, 1);
}
