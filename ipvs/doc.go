// Package ipvs will hold the IPVS table model, the diff of two tables into
// an ordered plan, the kernel dataplane (moby/ipvs) with an in-memory one
// for tests, and the director host settings (VIP binding, sysctls).
package ipvs
