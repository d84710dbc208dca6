/* Runs native/smc_tcpopt.h (the BPF program's option parser) in userspace: one TCP header
 * in hex per input line, one verdict (1, 0 or -1, as smc_tcpopt_find) per output line.
 * tests/unit/test_tcpopt.py feeds it the same headers as native/tcpopt.py. */
#include <stdio.h>
#include <string.h>
#include "smc_tcpopt.h"

int main(void)
{
	char line[512];

	while (fgets(line, sizeof line, stdin)) {
		unsigned char hdr[128] = {0};
		int n = 0, bad = 0;
		size_t len = strcspn(line, "\r\n");

		if (len % 2 || len / 2 > 64) {
			printf("-1\n");
			continue;
		}
		for (size_t i = 0; i < len; i += 2) {
			unsigned int b;
			if (sscanf(line + i, "%2x", &b) != 1) { bad = 1; break; }
			hdr[n++] = (unsigned char)b;
		}
		printf("%d\n", bad ? -1 : smc_tcpopt_find(hdr, n));
	}
	return 0;
}
