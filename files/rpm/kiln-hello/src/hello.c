#include <stdio.h>

int main(void)
{
    printf("hello from kiln-hello\n");
    return 0;
}
