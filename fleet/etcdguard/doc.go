// Package etcdguard refuses the upgrade of a control-plane node when taking
// its etcd member down would risk quorum, and holds an etcd lock so that
// one control-plane node upgrades at a time, across its reboot.
package etcdguard
