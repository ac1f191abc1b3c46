// Package director is the control loop of one node, the only place where
// config, cluster view and health meet: the pure Plan function, the
// effectors' reconciliation, the local API and the metrics.
package director
