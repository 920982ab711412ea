#include "core/sys.h"

#include <unistd.h>

static const struct ph_sys_ops sys_real = {
	.splice = splice,
	.read = read,
	.write = write,
	.accept4 = accept4,
	.pipe2 = pipe2,
};

struct ph_sys_ops ph_sys = {
	.splice = splice,
	.read = read,
	.write = write,
	.accept4 = accept4,
	.pipe2 = pipe2,
};

void ph_sys_reset(void)
{
	ph_sys = sys_real;
}
