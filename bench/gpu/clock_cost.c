/* What the limiter's launch-path clock costs on this machine: clock_gettime with the coarse and
 * the precise monotonic clock, the time-stamp counter, and a plain system call for scale.
 * Build and run: gcc -O2 -o clock_cost bench/gpu/clock_cost.c && ./clock_cost */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <x86intrin.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e9+t.tv_nsec;}
int main(void){
  const int N=2000000; struct timespec ts; volatile unsigned long long s=0;
  double t0=now(); for(int i=0;i<N;i++){clock_gettime(CLOCK_MONOTONIC_COARSE,&ts); s+=ts.tv_nsec;} double t1=now();
  printf("clock_gettime(MONOTONIC_COARSE) %.1f ns\n",(t1-t0)/N);
  t0=now(); for(int i=0;i<N;i++){clock_gettime(CLOCK_MONOTONIC,&ts); s+=ts.tv_nsec;} t1=now();
  printf("clock_gettime(MONOTONIC) %.1f ns\n",(t1-t0)/N);
  t0=now(); for(int i=0;i<N;i++){s+=__rdtsc();} t1=now();
  printf("rdtsc %.1f ns\n",(t1-t0)/N);
  t0=now(); for(int i=0;i<N/10;i++){s+=syscall(SYS_getppid);} t1=now();
  printf("syscall getppid %.1f ns\n",(t1-t0)/(N/10));
  return 0;}
