// Package soak is the soak lab: the whole director tier on Debian's kernel
// with IPVS, inside the VM lab's qemu, while a seeded schedule of faults
// plays, with client traffic running and the tier's invariants checked all
// the time. Its tests are the lab: TestLabSoak (on the host) boots the VM
// and runs TestVMSoak inside it. make soak SEED=n DURATION=d runs it.
package soak
