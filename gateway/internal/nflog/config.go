package nflog

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
)

// groupConfig is what Open asks the kernel for, in wire units.
type groupConfig struct {
	copyRange uint32 // bytes of each packet
	qthresh   uint32 // packets the kernel queues before it sends them
	timeout   uint32 // hundredths of a second the kernel holds a queue
}

// bindMessage asks the kernel to send group's packets to this socket. The
// bind command and the settings go in one request, which the kernel applies
// in that order to the instance it has just made: a separate request would
// leave the instance longer on its defaults (whole packets, batches of 100
// held up to a second).
//
// There is no NFULNL_CFG_CMD_PF_BIND: nftables' `log group` names the
// nfnetlink_log logger itself, and binding it as the family's default
// logger would also take over the namespace's other logging (such as
// conntrack's invalid-packet log) on the gateway.
func bindMessage(group uint16, c groupConfig) (netlink.Message, error) {
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode, packed
	binary.BigEndian.PutUint32(mode[0:4], c.copyRange)
	mode[4] = copyPacket
	attrs := []netlink.Attribute{
		{Type: cfgCmd, Data: []byte{cmdBind}},
		{Type: cfgMode, Data: mode},
		{Type: cfgQThresh, Data: binary.BigEndian.AppendUint32(nil, c.qthresh)},
		{Type: cfgTimeout, Data: binary.BigEndian.AppendUint32(nil, c.timeout)},
	}
	return configMessage(group, attrs, netlink.Request|netlink.Acknowledge)
}

// unbindMessage releases group. Close sends it without asking for an
// acknowledgement: it closes the socket right after, and closing it
// releases the group anyway.
func unbindMessage(group uint16) (netlink.Message, error) {
	return configMessage(group, []netlink.Attribute{{Type: cfgCmd, Data: []byte{cmdUnbind}}}, netlink.Request)
}

func configMessage(group uint16, attrs []netlink.Attribute, flags netlink.HeaderFlags) (netlink.Message, error) {
	// struct nfgenmsg: AF_UNSPEC, version, then the group as res_id.
	data := []byte{0, nfnetlinkV0, 0, 0}
	binary.BigEndian.PutUint16(data[2:4], group)
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("nflog: group %d: config attributes: %w", group, err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: configType, Flags: flags},
		Data:   append(data, b...),
	}, nil
}
